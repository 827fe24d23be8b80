// The few live parts of the pages (no framework, no build step): QR codes and face tickets
// that the server follows, code-send countdowns, the password rules as you type, and the
// subject number's search after the password. Every state-changing fetch carries the
// page's CSRF token.
(function () {
  "use strict";

  var meta = document.querySelector('meta[name="csrf-token"]');
  var csrfToken = meta ? meta.getAttribute("content") : "";

  function post(url, fields) {
    var body = new URLSearchParams(fields || {});
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "x-csrf-token": csrfToken },
      body: body
    }).then(function (response) { return response.json(); });
  }

  // Navigates, reloading when only the fragment would change (the server has news).
  function go(target) {
    var next = new URL(target, window.location.href);
    var here = window.location;
    if (next.pathname === here.pathname && next.search === here.search) {
      here.hash = next.hash;
      here.reload();
    } else {
      here.assign(next.href);
    }
  }

  // A QR code whose state the server follows (/bff/...): shows its text, goes where the
  // server says once it is done, offers a new code when it expired.
  function follow(box) {
    var status = box.querySelector("[data-status]");
    var renew = box.querySelector("[data-renew-button]");
    var interval = parseInt(box.getAttribute("data-interval") || "1500", 10);
    var timer = null;
    var busy = false;

    function stop() {
      if (timer !== null) { window.clearInterval(timer); timer = null; }
    }
    function show(text) {
      if (text && status && status.textContent !== text) { status.textContent = text; }
    }
    function tick() {
      if (busy) { return; }
      busy = true;
      post(box.getAttribute("data-poll")).then(function (answer) {
        busy = false;
        box.setAttribute("data-state", answer.state || "");
        show(answer.text);
        if (answer.redirect) { stop(); go(answer.redirect); return; }
        if (answer.state === "expired" || answer.state === "collected") {
          stop();
          if (renew) { renew.hidden = false; }
          return;
        }
        if (answer.done) { stop(); }
      }).catch(function () { busy = false; });
    }
    function start() { stop(); timer = window.setInterval(tick, interval); tick(); }

    if (renew) {
      renew.addEventListener("click", function () {
        post(box.getAttribute("data-renew")).then(function (answer) {
          var image = box.querySelector("img");
          if (answer.image && image) { image.src = answer.image; }
          show(answer.text);
          renew.hidden = true;
          start();
        });
      });
    }
    start();
  }
  Array.prototype.forEach.call(document.querySelectorAll("[data-poll]"), follow);

  // E2: the send button waits as long as the platform's RetryInfo says.
  Array.prototype.forEach.call(document.querySelectorAll("[data-wait-seconds]"), function (button) {
    var left = parseInt(button.getAttribute("data-wait-seconds"), 10) || 0;
    var label = button.getAttribute("data-label") || button.textContent;
    if (left <= 0) { return; }
    button.disabled = true;
    function show() { button.textContent = left + "秒后可重新获取"; }
    show();
    var timer = window.setInterval(function () {
      left -= 1;
      if (left <= 0) {
        window.clearInterval(timer);
        button.disabled = false;
        button.textContent = label;
      } else {
        show();
      }
    }, 1000);
  });

  // How long the code just sent stays valid.
  Array.prototype.forEach.call(document.querySelectorAll("[data-expires-seconds]"), function (line) {
    var left = parseInt(line.getAttribute("data-expires-seconds"), 10) || 0;
    var seconds = line.querySelector("[data-seconds]");
    var timer = window.setInterval(function () {
      left -= 1;
      if (left <= 0) {
        window.clearInterval(timer);
        line.textContent = "验证码已失效，请重新获取";
      } else if (seconds) {
        seconds.textContent = String(left);
      }
    }, 1000);
  });

  // C1 as the person types: 8-16 characters, at least two of digits, letters, specials.
  Array.prototype.forEach.call(document.querySelectorAll("[data-policy-for]"), function (list) {
    var input = document.getElementById(list.getAttribute("data-policy-for"));
    if (!input) { return; }
    function mark(rule, met) {
      var item = list.querySelector('[data-rule="' + rule + '"]');
      if (!item) { return; }
      item.classList.toggle("met", met);
      item.setAttribute("data-met", met ? "yes" : "no");
    }
    function check() {
      var value = input.value;
      var kinds = [/[0-9]/, /[A-Za-z]/, /[.@$%*#_+\-'&^]/].filter(function (kind) {
        return kind.test(value);
      }).length;
      mark("length", value.length >= 8 && value.length <= 16);
      mark("kinds", kinds >= 2);
    }
    input.addEventListener("input", check);
    check();
  });

  // D5, Q23: the subject number's fuzzy search after the password (the server answers only
  // with the subjects of the person whose password it verified). The listbox, its live
  // count and the field's 必填 prompt (none found: no relation) follow what is typed.
  Array.prototype.forEach.call(document.querySelectorAll("[data-subject-search]"), function (input) {
    var list = document.getElementById(input.getAttribute("data-subject-list"));
    var status = document.getElementById("subject-status");
    var prompt = document.getElementById("subject_number-error");
    var field = list ? list.closest("[data-subject-field]") : null;
    var pending = null;
    var asked = 0;
    if (!list) { return; }
    function show(answer) {
      list.textContent = "";
      (answer.subjects || []).forEach(function (subject, index) {
        var option = document.createElement("option");
        option.value = subject.number;
        option.textContent = subject.label;
        option.selected = index === 0;
        list.appendChild(option);
      });
      var required = answer.required || "";
      if (prompt) { prompt.textContent = required; prompt.hidden = !required; }
      if (required) { list.setAttribute("aria-invalid", "true"); } else { list.removeAttribute("aria-invalid"); }
      if (field) { field.classList.toggle("invalid", Boolean(required)); }
      if (status) { status.textContent = answer.query_error || answer.status || ""; }
    }
    input.addEventListener("input", function () {
      if (pending !== null) { window.clearTimeout(pending); }
      pending = window.setTimeout(function () {
        var mine = ++asked;
        post(input.getAttribute("data-subject-search"), { query: input.value.trim() })
          .then(function (answer) {
            if (mine !== asked) { return; }  // a later search is on its way
            if (answer.redirect) { go(answer.redirect); return; }
            show(answer);
          }).catch(function () {});
      }, 250);
    });
  });

  // The D5 face login form takes the subject typed into the password form above it.
  Array.prototype.forEach.call(document.querySelectorAll("[data-mirror]"), function (hidden) {
    var source = document.getElementById(hidden.getAttribute("data-mirror"));
    if (!source || !hidden.form) { return; }
    hidden.form.addEventListener("submit", function () { hidden.value = source.value; });
  });
}());
