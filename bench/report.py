"""bench/report.md and bench/charts/*.png from the results of one `make bench` run.

The figures, ratios and verdicts are generated; bench/analysis.md (written by whoever ran
and profiled it) is included as it is, after them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from matplotlib import ticker

ANALYSIS = "analysis.md"
LOGIN_RATIO = 0.85  # bench/run.py's


def _rows(results: dict[str, Any], group: str) -> list[dict[str, Any]]:
    return [r for r in results["rows"] if r["group"] == group]


def _row(results: dict[str, Any], name: str) -> dict[str, Any]:
    return next(r for r in results["rows"] if r["name"] == name)


def _verdict(row: dict[str, Any]) -> str:
    if row["pending"]:
        return "pending"
    if row["met"] is None:
        return ""
    return "met" if row["met"] else "**missed**"


def _num(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def _measured(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if not r["pending"]]


# --- charts -------------------------------------------------------------------------------


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _throughput_chart(results: dict[str, Any], path: Path) -> None:
    rows = _measured(_rows(results, "cheap")) + _measured(_rows(results, "login"))
    rows = [r for r in rows if not r["name"].startswith("login-start")]
    sync, platform = _row(results, "echo-sync"), _row(results, "echo-platform")
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.8))
    names = [r["name"] for r in rows]
    colors = ["#4c72b0" if r["path"] == "direct" else "#dd8452" for r in rows]
    ax.barh(names, [r["rps"] for r in rows], color=colors)
    ax.axvline(platform["rps"], color="black", linestyle="-", label="echo, platform server")
    ax.axvline(sync["rps"], color="grey", linestyle=":", label="echo, bare sync server")
    for fair, color in zip(
        _measured(_rows(results, "fair")), ("#c44e52", "#8172b3", "#937860"), strict=False
    ):
        ax.axvline(fair["rps"], color=color, linestyle="--", label=fair["name"])
    ax.invert_yaxis()
    ax.set_xlabel("calls per second (50 in flight; blue direct, orange through Envoy)")
    ax.set_title("RPCs beside the echo server and the fair ceilings (echo + one call)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    _save(fig, path)


def _latency_chart(results: dict[str, Any], path: Path) -> None:
    rows = _measured(_rows(results, "cheap")) + _measured(_rows(results, "login"))
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(rows) + 1.8))
    height = 0.27
    for k, (key, color) in enumerate(
        (("p50_ms", "#55a868"), ("p90_ms", "#4c72b0"), ("p99_ms", "#c44e52"))
    ):
        ax.barh(
            [i + (k - 1) * height for i in range(len(rows))],
            [r[key] for r in rows],
            height=height,
            color=color,
            label=key.removesuffix("_ms"),
        )
    ax.set_yticks(range(len(rows)), [r["name"] for r in rows])
    ax.invert_yaxis()
    ax.set_xscale("log")
    smallest = min((r["p50_ms"] for r in rows if r["p50_ms"] > 0), default=1.0)
    ax.set_xlim(left=10 ** math.floor(math.log10(smallest)))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _pos: f"{value:g}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel("latency, ms (log scale; 50 in flight)")
    ax.set_title("Latency percentiles per RPC")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    _save(fig, path)


def _login_chart(results: dict[str, Any], path: Path) -> None:
    logins = [r for r in _measured(_rows(results, "login")) if r["name"].startswith("login-start")]
    fig, ax = plt.subplots(figsize=(7, 3))
    if not logins:
        raw = _row(results, "argon2id-raw")
        ax.bar(["Argon2id raw"], [raw["rps"]], color="#4c72b0")
        ax.text(0.5, 0.5, "login pending", transform=ax.transAxes, ha="center")
    for i, login in enumerate(logins):
        # Each login beside the raw rate measured around it.
        raw = _row(results, login["ceiling"])
        where = login["name"].removeprefix("login-start ")
        ax.bar(
            [f"raw beside\n{where}", f"login-start\n{where}"],
            [raw["rps"], login["rps"]],
            color=["#8c8c8c", "#4c72b0"],
        )
        ax.hlines(
            LOGIN_RATIO * raw["rps"],
            2 * i - 0.4,
            2 * i + 1.4,
            color="red",
            linestyle="--",
            label=f"target {LOGIN_RATIO:g} x raw" if i == 0 else "_nolegend_",
        )
    ax.set_ylabel("per second")
    ax.set_title("Login step 1 beside the raw Argon2id rate of the same cores")
    if logins:
        ax.legend(fontsize=8)
    _save(fig, path)


def _overhead_chart(results: dict[str, Any], path: Path) -> None:
    rows = _measured(_rows(results, "overhead"))
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(rows) + 1.6))
    p50 = ax.barh(
        [r["name"] for r in rows], [r["p50_ms"] for r in rows], color="#55a868", label="p50"
    )
    ax.bar_label(p50, fmt="p50 %.2f", padding=3, fontsize=7)
    ax.barh(
        [r["name"] for r in rows],
        [r["p99_ms"] - r["p50_ms"] for r in rows],
        left=[r["p50_ms"] for r in rows],
        color="#c44e52",
        alpha=0.5,
        label="p50 to p99",
    )
    ax.invert_yaxis()
    ax.set_xlabel("latency, ms (one call in flight)")
    ax.set_title("Gateway overhead: direct vs through Envoy")
    ax.legend(fontsize=8)
    _save(fig, path)


# --- markdown -----------------------------------------------------------------------------


def _side_by_side(rows: list[dict[str, Any]]) -> list[str]:
    """The rounds' side-by-side ratios behind each median verdict, one line per row."""
    lines = [
        f"- {r['name']} over {r['ceiling']}, round by round: "
        + ", ".join(_num(x) for x in r["extra"]["cpu_ratios"])
        for r in rows
        if r["extra"].get("cpu_ratios")
    ]
    return [*lines, ""] if lines else []


def _table(rows: list[dict[str, Any]], *, ratio: bool = True, cpu: bool = False) -> list[str]:
    """Measured figures; `ratio`: beside a ceiling and a target; `cpu`: the CPU ratios and
    the fair ceiling too."""
    head = "| scenario | path | calls | calls/s | p50 ms | p90 ms | p99 ms | server CPU µs/call "
    rule = "|---|---|---:|---:|---:|---:|---:|---:"
    if ratio:
        head += "| ceiling | ratio |" + (" CPU ratio |" if cpu else "")
        rule += "|---|---:|" + ("---:|" if cpu else "")
        if cpu:
            head += " fair ceiling | ratio | CPU ratio |"
            rule += "---|---:|---:|"
        head += " target | verdict |"
        rule += "---|---|"
    else:
        head += "|"
        rule += "|"
    lines = [head, rule]
    for r in rows:
        cells = [r["name"], r["path"]]
        if r["pending"]:
            width = head.count("|") - 1
            lines.append("| " + " | ".join([*cells, *[""] * (width - 3), "pending"]) + " |")
            continue
        cells += [
            f"{r['count']:,.0f}",
            f"{r['rps']:,.0f}",
            _num(r["p50_ms"]),
            _num(r["p90_ms"]),
            _num(r["p99_ms"]),
            _num(r["server_cpu_us"], 0),
        ]
        if ratio:
            cells += [r["ceiling"], _num(r["ratio"])]
            if cpu:
                cells.append(_num(r.get("cpu_ratio")))
                cells += [
                    r.get("fair", ""),
                    _num(r.get("fair_ratio")),
                    _num(r.get("fair_cpu_ratio")),
                ]
            cells += [r["target"], _verdict(r)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _measured_text(r: dict[str, Any]) -> str:
    if r["group"] == "overhead":
        return (
            f"{r['extra']['added_p50_ms']:+.2f} ms at p50 "
            f"({r['extra']['added_p99_ms']:+.2f} ms at p99)"
        )
    if r.get("fair"):
        return (
            f"echo: {_num(r.get('cpu_ratio'))} CPU, {_num(r['ratio'])} throughput; "
            f"{r['fair']}: {_num(r.get('fair_cpu_ratio'))} CPU, {_num(r.get('fair_ratio'))} "
            "throughput"
        )
    text = f"{_num(r['ratio'])} x {r['ceiling']}"
    if r.get("cpu_ratio") is not None:
        text += f" (CPU {_num(r['cpu_ratio'])})"
    return text


def _summary(results: dict[str, Any]) -> list[str]:
    lines = ["| target | scenario | measured | verdict |", "|---|---|---|---|"]
    for r in results["rows"]:
        if r["group"] in ("ceiling", "fair"):
            continue
        if r["pending"]:
            lines.append(f"| | {r['name']} | {r['pending']} | pending |")
            continue
        if r["met"] is None:
            continue
        lines.append(f"| {r['target']} | {r['name']} | {_measured_text(r)} | {_verdict(r)} |")
    return lines


def _profiles(results: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for name, profile in results.get("profiles", {}).items():
        total = sum(seconds for _package, seconds in profile["packages"]) or 1.0
        lines += [
            f"### Profile: {name}",
            "",
            "A replica of the service under yappi (CPU clock, every thread) driven by the same "
            "load for 4 s; the shares matter, not the absolute times (yappi slows it down).",
            "",
            "| self CPU share | package |",
            "|---:|---|",
            *(f"| {sec / total:.1%} | {package} |" for package, sec in profile["packages"][:12]),
            "",
            "| self CPU share | calls | function |",
            "|---:|---:|---|",
        ]
        for where, seconds, calls in profile["self"][:15]:
            lines.append(f"| {seconds / total:.1%} | {calls:,} | `{where}` |")
        lines += ["", "| inclusive CPU share | function |", "|---:|---|"]
        for where, seconds, _calls in profile["inclusive"][:15]:
            lines.append(f"| {seconds / total:.1%} | `{where}` |")
        lines.append("")
    return lines


def _method(results: dict[str, Any]) -> list[str]:
    return [
        "## How it was measured",
        "",
        "**Configuration.** The benchmark runs the production shape: PostgreSQL and Redis "
        "(started by `tests/harness/servers.py` on free ports), the four services as "
        "`python -m services.<name>` processes, Envoy in front (`tests/harness/gateway.py`, "
        "one worker, rate limits raised so that no measured call is refused). The embedded "
        "default of `make run` (SQLite files, an in-process store per service) is for one "
        "developer: SQLite takes one writer at a time and an in-process store cannot be "
        "shared, so it cannot run replicas (E3) and its figures would describe a "
        "configuration nobody deploys. `--config embedded` runs the same set on it. "
        "PostgreSQL and Redis share this machine's cores with everything else, which "
        "production would not do; their CPU is not counted as the service's.",
        "",
        "**Placement (2 cores).** Each throughput scenario pins the service under test to "
        "core 0 (every thread, `sched_setaffinity` on /proc/<pid>/task) and everything else "
        "(ghz, Envoy, PostgreSQL, Redis, the other services) to core 1. The echo ceilings run "
        "the same way: echo server on core 0, ghz on core 1. So a ratio compares two servers "
        "given the same single core against the same client. Since ghz shares core 1 with "
        "the stores and Envoy in the platform runs (and with nothing in the echo runs), the "
        "report also gives the CPU ratio: server CPU per call (from /proc, the process under "
        "test only) of the echo over that of the RPC, which does not depend on how fast the "
        "client is. Login and the raw Argon2id rate use every core: nothing is pinned, and "
        "the raw rate runs one hashing thread per core, as auth's hash pool does; it is "
        "measured again beside each login scenario (raw, login, login, raw), which is "
        "compared with the mean of those two rates.",
        "",
        "**Why ratios.** Absolute figures move with whatever else runs on the machine; "
        "a ceiling measured minutes apart in the same run moves with them. Each scenario "
        f"runs {results['seconds_per_scenario']:g} s at {results['in_flight']} in flight "
        "over 4 connections, a judged one as two rounds of half that between its "
        "ceilings' (the first 200 calls of each, 50 for login, are served but not "
        "counted); single-use requests (refresh tokens, login challenges) run once each"
        + (
            f" (the {results['refresh_tokens_in_bulk']:,} refresh tokens are sessions written "
            "into auth's database in bulk, bench/bulk.py; the challenges come from logging in). "
            if results.get("refresh_tokens_in_bulk")
            else ". "
        )
        + "CheckAccess first gets one unmeasured pass over all its targets: binding keeps each "
        "person's document index in memory, as a long-running process has them all. "
        "Gateway overhead runs one call at a time (2000 calls), so the p50 difference is "
        "Envoy's own latency rather than queueing: the public listener (plaintext, an "
        "anonymous route) for FaceService.GetTicket, the internal listener (mutual TLS) for "
        "InternalBindingService.CheckAccess.",
        "",
        "**Data.** 1000 persons imported with `ImportLegacyPerson` (level 4, Argon2id hash "
        "with auth's parameters, so login never re-hashes), per 20 persons a client "
        "enterprise, an agency and agreement, and a cross-region project "
        "(`bench/dataset.py`, shared with `make load`); SMS sends go to a new phone per call; "
        "face tickets are created just before their scenario.",
        "",
        "**Failures.** Any call that is not OK stops the run with an error and no report.",
        "",
    ]


def markdown(results: dict[str, Any], analysis: str) -> str:
    meta = results["machine"]
    load = ", ".join(f"{x:.2f}" for x in meta["load_average_at_start"])
    ceilings = _rows(results, "ceiling")
    raws = [r for r in ceilings if r["name"].startswith("argon2id-raw")]
    lines = [
        "# Benchmark report (`make bench`)",
        "",
        f"- Run: {results['started']} to {results['finished']} (China Standard Time)",
        f"- Machine: {meta['cpus']} cores ({meta['cpu_model']}), Python {meta['python']}; "
        f"load average at start {load}",
        f"- Configuration: **{results['configuration']}** "
        + (
            "(PostgreSQL + Redis, four service processes, Envoy)"
            if results["configuration"] == "production"
            else "(SQLite files + in-process stores, four service processes, Envoy)"
        ),
        f"- {results['seconds_per_scenario']:g} s per throughput scenario at "
        f"{results['in_flight']} calls in flight",
    ]
    if results.get("note"):
        lines.append(f"- **Note: {results['note']}**")
    if not results["login_available"]:
        lines.append(
            "- **Login (AuthService) is not on this branch yet: its scenarios are listed as "
            "pending.**"
        )
    lines += [
        "",
        "Every figure is beside a ceiling measured in the same run on the same machine; the "
        "verdicts compare ratios, which hold up far better than absolute numbers on a shared "
        "2-core machine.",
        "",
        "## Targets",
        "",
        *_summary(results),
        "",
        "## Ceilings",
        "",
        *_table(ceilings[:2] + _rows(results, "fair"), ratio=False),
        "",
        "Fair ceilings: the platform echo server (interceptor, health, reflection) plus "
        "exactly one call an RPC cannot avoid, through the services' own clients, against "
        "the platform's Redis and PostgreSQL on the other core: echo-redis one script "
        "(`RedisStore.run`, an HGET), echo-postgres one prepared primary-key SELECT "
        "(`Database.run`), echo-grpc one unary call to a bare echo server on the other core "
        "(`clients.Dependency`, as auth calls sms, face and binding). Each judged scenario (the "
        "direct rows) is measured in two rounds alternating with the platform echo and its "
        "fair ceiling (echo, fair, RPC, RPC, fair, echo, each half a scenario's time) and "
        'compared with their rounds summed (the rows named "... beside <scenario>"; the '
        "rounds are under Rounds below): this machine's speed drifts by up to a third within "
        "a run and changes within a minute, so a ceiling of the run's start, or one measured "
        "once just before, is no ceiling for a scenario. The gateway rows use the ceilings of "
        "the run's start.",
        "",
        f"Argon2id (OWASP: 19 MiB, t=2, p=1) with {meta['cpus']} threads, measured at the start "
        "and again just before each login scenario, which is compared with the rate measured "
        "before it:",
        "",
        *(
            f"- {raw['name']}: **{raw['rps']:.1f} hashes/s** "
            f"({raw['extra']['ms_per_hash_per_core']:.1f} ms per hash per thread, "
            f"{(raw['server_cpu_us'] or 0) / 1e3:.1f} ms CPU per hash)"
            for raw in raws
        ),
        "",
        "## Hot RPCs (50 in flight)",
        "",
        "![throughput](charts/throughput.png)",
        "",
        *_table(_rows(results, "cheap"), cpu=True),
        "",
        "ratio: throughput over the ceiling's; CPU ratio: the ceiling's CPU per call over the "
        "service's, both on core 0, which is what the throughput ratio would be if the "
        "service core alone were the limit (the load generator shares core 1 with Envoy, "
        "PostgreSQL and Redis). A target holds when both ratios reach it, against the echo "
        "and against the fair ceiling; verdicts are on the direct rows (the gateway rows add "
        "Envoy's CPU on the client core, not the service's).",
        "",
        "![latency](charts/latency.png)",
        "",
        "## Login",
        "",
        "![login](charts/login.png)",
        "",
        *_table(_rows(results, "login"), cpu=True),
        "",
        "login-start: every process on every core, like the raw hash rate; its CPU ratio is "
        "the raw CPU per hash over auth's CPU per login. login-complete-sms (step 2, no hash) "
        "is compared with the echo and with echo-grpc (its unavoidable call: VerifyCode at "
        "sms) like the other hot RPCs.",
        "",
        "## Processes per service (two cores)",
        "",
        *_table(_rows(results, "scaling")),
        "",
        "One process pinned to core 0 with everything else on core 1, beside two processes of "
        "the same service (sharing Redis and PostgreSQL) on core 0 and core 1 with ghz, the "
        "stores and the other services unpinned, the same 50 calls in flight split over two "
        "ghz runs. On two cores the load generator and the stores share the cores with the "
        "service, so the ratio is what this machine allows, not the per-core scaling "
        "(the CPU per call shows whether a process got slower).",
        "",
        "## Gateway overhead (one call in flight)",
        "",
        "![overhead](charts/overhead.png)",
        "",
        *_table(_rows(results, "overhead")),
        "",
        "## Metrics and tracing cost (issue 15)",
        "",
        "The cheap RPCs direct to their service on a platform with metrics on (per-RPC "
        "metrics, store and database timers, domain counters; tracing off, as by default: "
        "`ETAX_OTEL_ENDPOINT` unset) and on one started with `ETAX_METRICS_ENABLED=false`; "
        "the target is at most 5 % more service CPU per call. Two such platforms run at "
        "once, and of two the one started first measures more CPU per call (bench/analysis.md), "
        "so the comparison runs on two pairs, one started on then off (rounds 1 to 4) and "
        "one started off then on (rounds 5 to 8): each RPC is measured in four short rounds "
        "on each platform of a pair, in the order on, off, off, on, on, off, off, on and "
        "then off, on, on, off, off, on, on, off, so the machine's drift and the start order "
        "fall on both alike. Each round is compared with the other state's round next to "
        "it, and the ratio (the verdict) is the median of those eight side-by-side ratios, "
        "listed below the table: one round in four or five runs a third faster or slower "
        "than the one beside it, which a sum carries into its figure and a median does not. "
        "Each row is a state's rounds together (calls and CPU summed, percentiles the "
        "calls-weighted mean; the rounds themselves are under Rounds below).",
        "",
        *_table(_rows(results, "observability"), cpu=False),
        "",
        *_side_by_side(_rows(results, "observability")),
        "## Rounds",
        "",
        "The measurements whose sums the judged, login-start and metrics rows compare: each "
        "judged RPC and its ceilings in the order echo, fair, RPC, RPC, fair, echo; "
        "login-start and the raw Argon2id rate beside it in the order raw, login, login, raw; "
        "metrics on "
        "and off in the order on, off, off, on, ..., then on a new pair off, on, on, off, "
        "... A rate that drifts steadily over the rounds falls on both sides alike.",
        "",
        *_table(_rows(results, "rounds"), ratio=False),
        "",
        *_profiles(results),
        *_method(results),
        analysis.strip(),
        "",
    ]
    return "\n".join(lines)


def write(results: dict[str, Any], out: Path) -> list[Path]:
    charts = out / "charts"
    charts.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in (
        ("throughput", _throughput_chart),
        ("latency", _latency_chart),
        ("login", _login_chart),
        ("overhead", _overhead_chart),
    ):
        path = charts / f"{name}.png"
        draw(results, path)
        written.append(path)
    analysis_path = Path(__file__).resolve().parent / ANALYSIS
    analysis = analysis_path.read_text() if analysis_path.exists() else ""
    report = out / "report.md"
    report.write_text(markdown(results, analysis))
    written.append(report)
    return written
