"""The size comparison (`make bench-size`, or `make bench BENCH_ARGS="--persons 1000000"`):
every hot RPC at 10,000 persons and at N (bulk-loaded with COPY, bench/bulk.py), p50 and
CPU per call at N over at 10,000. Target: <= 1.1 for each (index scans everywhere, so
per-call work must not grow with the number of persons).

Two platforms run at once, one loaded with 10,000 persons and one with N, and each RPC is
measured on them in alternating rounds (small, large, large, small, ...): this machine's
speed drifts by up to a third within a run and one round in four or five runs a third
faster or slower than the one beside it (bench/analysis.md), more than the 10% the target
allows. So the sizes are compared round by round, each round beside the other size's
next to it, and the verdict is the median of those ratios. While one platform is
measured (its service on core 0, the rest on core 1, login step 1 on every core) every
process of the other waits on core 1.

Writes bench/size-report.md and bench/size-results.json (bench/report.md stays the main
run's). Requests go to persons spread over the whole loaded range: CheckAccess targets of
500 persons and StartLogin by their phones, refresh tokens of 2,000, login challenges made
for 1,000 just before step 2 is measured (after as many other persons' logins, unmeasured).
At 10,000 persons a sample holds one person per group of 20 (500).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from etax.auth.v1 import auth_pb2, auth_pb2_grpc
from etax.binding.v1 import binding_pb2
from etax.common.v1 import types_pb2

from bench import bulk, ghz
from bench.dataset import (
    CALL_TIMEOUT,
    GROUP_SIZE,
    PASSWORD,
    PROJECT_PROVINCE,
    PROVINCE,
    Channels,
    Person,
    as_json,
    face_tickets,
    login_challenges,
    resident_id,
)
from bench.platform import ALL_CPUS, OTHER_CPUS, Platform, running_platform
from bench.run import (
    BENCH,
    GHZ,
    ROUNDS,
    UNLIMITED,
    Bench,
    Row,
    alternating,
    login_complete_load,
    machine,
    median_ratio,
    ratios_side_by_side,
    round_load,
    rounds_together,
)
from etax_platform.clock import CST
from etax_platform.keyrings import HmacKeyring
from etax_platform.pii import Keyring

SMALL = 10_000
SAMPLE = 500
# Single-use requests per size, shared out between its rounds: enough for each round to
# last most of a second (250 refreshes a round lasted 0.1-0.3 s, and its ramp-up made the
# rounds of one size differ by two to one at p50). A refresh sample of a quarter of the
# small size at most: its warm-up refreshes the persons two further on.
REFRESHES = 2_000
# Shared buffers that hold a million persons' auth and binding databases (1.8 and 1.5 GB,
# one PostgreSQL per platform), as a production database is sized for its working set:
# with the harness's default of 128 MB a refresh at 1M read 8.8 blocks from outside them,
# against 0.1 at 10k, and with 2 GB binding's prewarm (bench/bulk.py) pushed auth's pages
# out again (bench/analysis.md). Both sizes.
POSTGRES_SETTINGS = {"shared_buffers": "4GB"}
CHALLENGES = 1_000
SIZE_RATIO = 1.1
# Rounds per size and RPC (small, large, large, small, ...): a load of a duration in
# SIZE_ROUNDS rounds of a third of a scenario each (the time of two whole scenarios), a
# load of single-use requests in SINGLE_USE_ROUNDS shares (at the small size a sample
# holds a person per group, 500: 250 refreshes a round). The verdict is the median of the
# rounds' side-by-side ratios (of two, their mean).
SIZE_ROUNDS = 6
SINGLE_USE_ROUNDS = 2
SERVICE = {
    "sms-send": "sms",
    "face-get-ticket": "face",
    "access-check": "binding",
    "identities-list": "binding",
    "token-refresh": "auth",
    "login-start": "auth",
    "login-complete-sms": "auth",
}


def _sample(persons: int, parity: int, count: int = SAMPLE) -> list[int]:
    """`count` persons spread over [0, persons), odd or even ones (single-use material of
    the two sizes never meets), none of them a group's first person (the client's legal
    representative, whose relations differ from the rest of the group's): both sizes'
    samples hold the same kind of person."""
    step = max(GROUP_SIZE, persons // count // GROUP_SIZE * GROUP_SIZE)
    offsets = [o for o in range(1, GROUP_SIZE) if o % 2 == parity]
    starts = range(0, persons - GROUP_SIZE + 1, step)
    return [start + offsets[k % len(offsets)] for k, start in enumerate(starts)][:count]


def _person(i: int) -> Person:
    document = types_pb2.NamedDocument(
        document=types_pb2.Document(
            type=types_pb2.DOCUMENT_TYPE_RESIDENT_IDENTITY_CARD, number=resident_id(i)
        ),
        name=bulk.name(i),
    )
    return _BulkPerson(i, bulk.person_id(i), document)


class _BulkPerson(Person):
    @property
    def phone(self) -> str:
        return bulk.phone(self.index)


def _targets(sample: list[int]) -> list[dict[str, Any]]:
    found = []
    for i in sample:
        group = bulk.group_of(i)
        found.append(
            binding_pb2.CheckAccessRequest(
                person_id=bulk.person_id(i),
                target=binding_pb2.Target(
                    entry=types_pb2.ENTRY_AGENT,
                    agency_code=bulk.agency_code(group),
                    client_code=bulk.client_code(group),
                    province=PROVINCE,
                ),
            )
        )
        found.append(
            binding_pb2.CheckAccessRequest(
                person_id=bulk.person_id(i),
                target=binding_pb2.Target(
                    entry=types_pb2.ENTRY_SPECIFIC_SUBJECT,
                    subject_type=types_pb2.SUBJECT_TYPE_CROSS_REGION_INSPECTION,
                    subject_number=bulk.project_number(group),
                    province=PROJECT_PROVINCE,
                ),
            )
        )
    return [as_json(t) for t in found]


def _loads(
    bench: Bench, platform: Platform, persons: int, parity: int, size: str
) -> list[ghz.Load]:
    sample = _sample(persons, parity)
    channels = Channels.direct(platform.address)
    try:
        tickets = [as_json(t) for t in face_tickets(channels, 500)]
        # An access token of one person in the middle (ghz sends one metadata object).
        auth = auth_pb2_grpc.AuthServiceStub(channels.channel("auth"))
        middle = sample[len(sample) // 2]
        access_token = auth.RefreshSession(
            auth_pb2.RefreshSessionRequest(refresh_token=bulk.refresh_token(middle)),
            timeout=CALL_TIMEOUT,
        ).session.access_token
    finally:
        channels.close()
    refreshes = [
        {"refresh_token": bulk.refresh_token(i)}
        for i in _sample(persons, parity, REFRESHES)
        if i != middle
    ]
    address = platform.address
    return [
        ghz.Load(
            f"sms-send {size}",
            "etax.sms.v1.SmsService.SendCode",
            address("sms"),
            base="sms-send",
            data={
                "phone": ("137" if parity else "138") + "{{printf `%08d` .RequestNumber}}",
                "purpose": "VERIFICATION_PURPOSE_REGISTRATION",
            },
            duration=bench.duration,
            skip_first=200,
        ),
        ghz.Load(
            f"face-get-ticket {size}",
            "etax.face.v1.FaceService.GetTicket",
            address("face"),
            data=tickets,
            duration=bench.duration,
            skip_first=200,
        ),
        ghz.Load(
            f"access-check {size}",
            "etax.binding.v1.InternalBindingService.CheckAccess",
            address("binding"),
            base="access-check",
            data=_targets(sample),
            duration=bench.duration,
            skip_first=200,
            warm_up_calls=2 * len(sample),
        ),
        ghz.Load(
            f"identities-list {size}",
            "etax.binding.v1.BindingService.ListMyIdentities",
            address("binding"),
            base="identities-list",
            data={"province": PROJECT_PROVINCE},
            metadata={"authorization": f"Bearer {access_token}"},
            duration=bench.duration,
            skip_first=200,
        ),
        ghz.Load(
            f"token-refresh {size}",
            "etax.auth.v1.AuthService.RefreshSession",
            address("auth"),
            base="token-refresh",
            data=refreshes,
            total=len(refreshes),
        ),
        ghz.Load(
            f"login-start {size}",
            "etax.auth.v1.AuthService.StartLogin",
            address("auth"),
            base="login-start",
            data=[
                {
                    "entry": "ENTRY_NATURAL_PERSON",
                    "account": bulk.phone(i),
                    "password": PASSWORD,
                    "province": PROVINCE,
                }
                for i in sample
            ],
            duration=bench.duration,
            skip_first=50,
        ),
    ]


@dataclass
class _Size:
    label: str  # 10k, 1M
    persons: int
    parity: int  # odd or even persons: single-use material of the two never meets
    platform: Platform


def _platforms(sizes: list[_Size]) -> list[Platform]:
    return [size.platform for size in sizes]


def _challenge_loads(size: _Size) -> tuple[ghz.Load, ghz.Load]:
    """Login step 2 of CHALLENGES persons, and before it, unmeasured, of as many others
    (the other parity's): auth opens its statement and store connections and prepares
    its statements on each as calls need them, and a first round paid for that (as in
    bench/run.py `_warm_logins`; 1,040 µs against 780 for the round after it at 1M, where
    there was none). Challenges expire after 5 minutes, so they are made just before."""
    platform = size.platform
    platform.place(None)
    address = platform.address("auth")
    channels = Channels.direct(platform.address)
    try:
        made = [
            login_challenges(channels, [_person(i) for i in sample], len(sample))
            for sample in (
                _sample(size.persons, 1 - size.parity, CHALLENGES),
                _sample(size.persons, size.parity, CHALLENGES),
            )
        ]
    finally:
        channels.close()
    warm, measured = (
        login_complete_load(f"login-complete-sms {size.label}{suffix}", address, challenges)
        for suffix, challenges in zip((" warm-up", ""), made, strict=True)
    )
    return warm, measured


def _measure_in_rounds(bench: Bench, sizes: list[_Size], loads: list[ghz.Load]) -> None:
    """One RPC (a load per size, in the order of `sizes`, small then large) in rounds on
    each size, alternating; the rounds of a size together are its figure, and the large
    size's row holds the rounds' side-by-side ratios (large over small)."""
    base = loads[0].name.split()[0]
    service = SERVICE[base]
    hashing = base == "login-start"
    single_use = loads[0].total is not None
    count = SINGLE_USE_ROUNDS if single_use else SIZE_ROUNDS
    seconds = None if single_use else max(1.0, 2 * bench.seconds / SIZE_ROUNDS)
    rounds: dict[str, list[Row]] = {size.label: [] for size in sizes}
    pairs = list(zip(sizes, loads, strict=True))
    for number, (size, load) in alternating(pairs, count):
        size.platform.place_beside(_platforms(sizes), None if hashing else service)
        share = round_load(load, f"{load.name} (round {number + 1})", number, count, seconds)
        row = bench.measure(
            # What the first round's warm-up put in memory (binding's indexes) stays there.
            replace(share, warm_up_calls=0) if number else share,
            group=ROUNDS,
            path="direct",
            placement="every process on every core"
            if hashing
            else f"{service} core 0; ghz, stores, other services core 1",
            pid=size.platform.pid(service),
            client_cpus=ALL_CPUS if hashing else OTHER_CPUS,
        )
        row.extra["persons"] = size.persons
        rounds[size.label].append(row)
    together = []
    for size, load in zip(sizes, loads, strict=True):
        row = rounds_together(size.label, load.name, rounds[size.label])
        row.extra["persons"] = size.persons
        together.append(row)
    bench.rows += together
    small, large = (rounds[size.label] for size in sizes)
    together[1].extra["p50_ratios"] = ratios_side_by_side(large, small, lambda r: r.p50_ms)
    together[1].extra["cpu_ratios"] = ratios_side_by_side(large, small, lambda r: r.server_cpu_us)


def _open_statement_connections(
    bench: Bench, sizes: list[_Size], size: _Size, refresh: ghz.Load
) -> None:
    """Refreshes of other persons' sessions, as many at once as the measured ones: auth
    opens its statement connections as calls need them, and a round of single-use
    refreshes would otherwise pay for opening up to 50 (a first round cost twice the
    second at 1M). Never a person of the samples: the measured refreshes, and the one
    whose session `_loads` refreshed for its access token (at 20,000 persons, two further
    on from the refresh sample is often in it)."""
    refreshes = _sample(size.persons, size.parity, REFRESHES)
    taken = {*refreshes, *_sample(size.persons, size.parity)}
    tokens = [
        {"refresh_token": bulk.refresh_token(i + 2)}
        for i in refreshes
        if i + 2 not in taken and i + 2 < size.persons
    ]
    _unmeasured(
        bench,
        sizes,
        size,
        replace(refresh, name=f"{refresh.name} warm-up", data=tokens, total=len(tokens)),
    )


def _unmeasured(bench: Bench, sizes: list[_Size], size: _Size, load: ghz.Load) -> None:
    """A warm-up pass of auth on `size`'s platform, the other waiting on core 1."""
    size.platform.place_beside(_platforms(sizes), "auth")
    ghz.run(GHZ, load, bench.workdir / "ghz-warm-up", OTHER_CPUS)


def _measure_sizes(bench: Bench, sizes: list[_Size]) -> None:
    per_size = [_loads(bench, s.platform, s.persons, s.parity, s.label) for s in sizes]
    for loads in zip(*per_size, strict=True):
        if loads[0].name.startswith("token-refresh"):
            for size, load in zip(sizes, loads, strict=True):
                _open_statement_connections(bench, sizes, size, load)
        _measure_in_rounds(bench, sizes, list(loads))
    warm_ups, logins = zip(*(_challenge_loads(size) for size in sizes), strict=True)
    for size, warm in zip(sizes, warm_ups, strict=True):
        _unmeasured(bench, sizes, size, warm)
    _measure_in_rounds(bench, sizes, list(logins))


def _over(large: float | None, small: float | None) -> float | None:
    return large / small if large and small else None


def compare(bench: Bench, small: str, large: str) -> list[dict[str, Any]]:
    """Per RPC: p50 and CPU per call at the large size over the small one, the median of
    its rounds' side-by-side ratios (the verdict), beside its rounds summed."""
    found = []
    for row in [r for r in bench.rows if r.group == large]:
        base = row.name.split()[0]
        before = bench.row(f"{base} {small}")
        p50s, cpus = row.extra["p50_ratios"], row.extra["cpu_ratios"]
        p50, cpu = median_ratio(p50s), median_ratio(cpus)
        found.append(
            {
                "rpc": base,
                "p50_small_ms": before.p50_ms,
                "p50_large_ms": row.p50_ms,
                "cpu_small_us": before.server_cpu_us,
                "cpu_large_us": row.server_cpu_us,
                "p50_ratio": p50,
                "cpu_ratio": cpu,
                "p50_ratios": p50s,
                "cpu_ratios": cpus,
                "p50_summed_ratio": _over(row.p50_ms, before.p50_ms),
                "cpu_summed_ratio": _over(row.server_cpu_us, before.server_cpu_us),
                "met": p50 is not None and cpu is not None and max(p50, cpu) <= SIZE_RATIO,
            }
        )
    return found


def run(args: argparse.Namespace) -> dict[str, Any]:
    if not GHZ.exists():
        raise SystemExit(f"ghz not found at {GHZ}: `make bench` installs it")
    if args.persons <= SMALL or args.persons % 20:
        raise SystemExit(f"--persons: more than {SMALL:,}, a multiple of 20")
    started = datetime.now(CST)
    workdir = Path(tempfile.mkdtemp(prefix="etax-bench-size-"))
    bench = Bench(args.seconds, workdir, lambda line: print(line, flush=True))
    meta = machine()
    bench.log(f"work directory {workdir}; {meta}")
    small, large = f"{SMALL // 1000}k", _label(args.persons)
    timings: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        sizes = []
        for label, persons, parity in ((small, SMALL, 0), (large, args.persons, 1)):
            platform = stack.enter_context(
                running_platform(
                    workdir / f"platform-{label}",
                    "production",
                    gateway_overrides=UNLIMITED,
                    postgres_settings=POSTGRES_SETTINGS,
                )
            )
            sizes.append(_Size(label, persons, parity, platform))
        try:
            for kind, size in zip(("small", "large"), sizes, strict=True):
                size.platform.place(None)
                clock = datetime.now(CST)
                _loader(size.platform).load(0, size.persons, bench.log)
                timings[f"load_{kind}_seconds"] = (datetime.now(CST) - clock).total_seconds()
            _measure_sizes(bench, sizes)
        except Exception:
            for size in sizes:
                print(size.platform.logs(), file=sys.stderr)
            raise
    return {
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(CST).isoformat(timespec="seconds"),
        "seconds_per_scenario": args.seconds,
        "persons": args.persons,
        "small": small,
        "large": large,
        "machine": meta,
        "note": args.note,
        "timings": timings,
        "postgres_settings": POSTGRES_SETTINGS,
        "rows": [asdict(r) for r in bench.rows],
        "comparison": compare(bench, small, large),
    }


def _loader(platform: Platform) -> bulk.BulkLoader:
    env = platform.env
    return bulk.BulkLoader(
        bulk.Databases.of(env),
        Keyring.parse(
            env["ETAX_PII_KEYS"], env["ETAX_PII_ACTIVE_KEY_ID"], env["ETAX_PII_INDEX_KEY"]
        ),
        HmacKeyring.parse(env["ETAX_BINDING_INDEX_KEYS"], env["ETAX_BINDING_INDEX_ACTIVE_KEY_ID"]),
    )


def _label(persons: int) -> str:
    if persons % 1_000_000 == 0:
        return f"{persons // 1_000_000}M"
    return f"{persons // 1000}k"


def _num(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def _ratio(median: float | None, ratios: list[float] | None) -> str:
    """The median ratio and, for more than one round, the range of the rounds' ratios."""
    if not ratios or len(ratios) < 2:
        return _num(median)
    return f"{_num(median)} ({_num(min(ratios))}–{_num(max(ratios))})"


def markdown(results: dict[str, Any]) -> str:
    meta = results["machine"]
    small, large = results["small"], results["large"]
    timings = results["timings"]
    lines = [
        f"# Size comparison: {small} and {large} persons (`make bench-size`)",
        "",
        f"- Run: {results['started']} to {results['finished']} (China Standard Time)",
        f"- Machine: {meta['cpus']} cores ({meta['cpu_model']}), Python {meta['python']}; "
        f"load average at start {', '.join(f'{x:.2f}' for x in meta['load_average_at_start'])}",
        f"- Bulk load (COPY), one platform each: {small} in "
        f"{timings.get('load_small_seconds', 0):.0f} s, {results['persons']:,} in "
        f"{timings.get('load_large_seconds', 0):.0f} s; each person with a phone, a session "
        "and a refresh token; per 20 persons a client enterprise, an agency with an "
        "agreement and a cross-region project (bench/bulk.py); each load ends with ANALYZE, "
        "VACUUM and CHECKPOINT, reads every table and index into shared buffers (pg_prewarm) "
        "and waits (90 s at most) for the machine's load average to fall under 1",
        "- PostgreSQL: the test harness's settings"
        + "".join(f", {k} {v}" for k, v in results.get("postgres_settings", {}).items()),
        f"- {results['seconds_per_scenario']:g} s per throughput scenario at 50 calls in flight",
    ]
    if results.get("note"):
        lines.append(f"- **Note: {results['note']}**")
    lines += [
        "",
        f"## {large} over {small} (target: p50 and CPU per call <= {SIZE_RATIO:g} x)",
        "",
        "Both platforms run at once; each RPC is measured on them in alternating rounds "
        f"({small}, {large}, {large}, {small}, ...; {SIZE_ROUNDS} a size for a load of a "
        f"duration, each a third of a scenario, {SINGLE_USE_ROUNDS} for single-use "
        "requests). Each round is compared with the other size's round next to it, and "
        "the ratio is the median of those side-by-side ratios (for two, their mean; "
        "the lowest and highest in brackets): on this machine one round in four or five "
        "runs a third faster or slower than the one beside it, which a sum of rounds "
        "carries into its figure and a median does not. The milliseconds and microseconds "
        "are a size's rounds together (calls and CPU summed, percentiles the calls-weighted "
        "mean).",
        "",
        f"| RPC | p50 ms at {small} | at {large} | ratio | CPU µs/call at {small} | at {large} "
        "| ratio | verdict |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in results["comparison"]:
        lines.append(
            f"| {c['rpc']} | {_num(c['p50_small_ms'])} | {_num(c['p50_large_ms'])} | "
            f"{_ratio(c['p50_ratio'], c.get('p50_ratios'))} | {_num(c['cpu_small_us'], 0)} | "
            f"{_num(c['cpu_large_us'], 0)} | {_ratio(c['cpu_ratio'], c.get('cpu_ratios'))} | "
            f"{'met' if c['met'] else '**missed**'} |"
        )
    lines += [
        "",
        "## Every run",
        "",
        "| scenario | persons | calls | calls/s | p50 ms | p90 ms | p99 ms | server CPU µs/call |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['name']} | {r['extra']['persons']:,} | {r['count']:,.0f} | "
            f"{r['rps']:,.0f} | {_num(r['p50_ms'])} | {_num(r['p90_ms'])} | "
            f"{_num(r['p99_ms'])} | {_num(r['server_cpu_us'], 0)} |"
        )
    lines += [
        "",
        "Placement as in bench/report.md: the service under test on core 0 and everything "
        "else of its platform on core 1, login step 1 on every core; every process of the "
        "other platform on core 1. Requests go to persons spread over the whole loaded range "
        "(odd persons at the large size, even ones at the small); single-use refresh tokens "
        "and challenges are shared out between a size's rounds, and before them as many "
        "refreshes and logins of persons outside the samples run unmeasured (auth opens and "
        "prepares its connections as calls need them); ListMyIdentities uses one "
        "person's token, as ghz sends one metadata object. SMS sends go to new phones and "
        "face tickets are made just before, so neither meets a person: their ratios show "
        'what is left of the machine\'s noise. The rows named "(round n)" are the rounds.',
        "",
    ]
    return "\n".join(lines)


def write(results: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "size-results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False))
    report = out / "size-report.md"
    report.write_text(markdown(results))
    return [out / "size-results.json", report]


def main(args: argparse.Namespace) -> int:
    results = run(args)
    for path in write(results, args.out or BENCH):
        print(f"wrote {path}")
    return 0
