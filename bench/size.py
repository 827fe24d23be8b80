"""The size comparison (`make bench-size`, or `make bench BENCH_ARGS="--persons 1000000"`):
every hot RPC at 10,000 persons and again at N (bulk-loaded with COPY, bench/bulk.py),
p50 and CPU per call at N over at 10,000. Target: <= 1.1 for each (index scans
everywhere, so per-call work must not grow with the number of persons).

This machine's speed drifts by up to a third within a run (bench/analysis.md), more than
the 10% the target allows, so each RPC is measured just after a reference of the machine's
speed: its fair ceiling on the same core (the raw Argon2id rate for StartLogin, which is
almost all hashing). The verdict is on the ratio corrected by the reference's own ratio
between the two sizes; the raw ratios stand beside it.

Writes bench/size-report.md and bench/size-results.json (bench/report.md stays the main
run's). Each RPC is measured direct, placed as in the main run (the service on core 0,
everything else on core 1; login step 1 on every core), against persons spread over the
whole loaded range: CheckAccess targets and refresh tokens of 500 persons, StartLogin by
their phones, login challenges made for 300 of them just before step 2 is measured.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

from etax.auth.v1 import auth_pb2, auth_pb2_grpc
from etax.binding.v1 import binding_pb2
from etax.common.v1 import types_pb2

from bench import bulk, ghz
from bench.dataset import (
    CALL_TIMEOUT,
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
    TARGETS,
    UNLIMITED,
    Bench,
    Row,
    machine,
    measure_ceilings,
    raw_hash_rate,
)
from etax_platform.clock import CST
from etax_platform.keyrings import HmacKeyring
from etax_platform.pii import Keyring

SMALL = 10_000
SAMPLE = 500
CHALLENGES = 300
SIZE_RATIO = 1.1
REFERENCE = "reference"  # the group of the speed references
SERVICE = {
    "sms-send": "sms",
    "face-get-ticket": "face",
    "access-check": "binding",
    "identities-list": "binding",
    "token-refresh": "auth",
    "login-start": "auth",
    "login-complete-sms": "auth",
}


def _sample(persons: int, parity: int) -> list[int]:
    """SAMPLE persons spread over [0, persons), odd or even ones (single-use material of
    the two sizes never meets)."""
    step = max(2, persons // SAMPLE)
    return [i - i % 2 + parity for i in range(0, persons - 1, step)][:SAMPLE]


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
    channels = Channels(*(platform.address(s) for s in ("auth", "binding", "sms", "face")))
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
            data=[{"refresh_token": bulk.refresh_token(i)} for i in sample if i != middle],
            total=len(sample) - 1,
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


def _reference(bench: Bench, platform: Platform, scenario: str) -> Row:
    """The machine's speed just before a scenario: the raw hash rate for StartLogin, the
    RPC's fair ceiling for the others (the platform echo plus its one store call or hop,
    so a store slowed by what the bulk load left it to do slows the reference too)."""
    base = scenario.split(maxsplit=1)[0]
    if base == "login-start":
        row = raw_hash_rate(bench, f"argon2id-raw before {scenario}")
    else:
        (row,) = measure_ceilings(bench, platform, [TARGETS[base][1]], before=scenario)
    row.group = REFERENCE
    return row


def _measure_size(bench: Bench, platform: Platform, persons: int, parity: int, size: str) -> None:
    for load in _loads(bench, platform, persons, parity, size):
        base = load.name.split()[0]
        service = SERVICE[base]
        hashing = base == "login-start"
        _reference(bench, platform, load.name)
        platform.place(None if hashing else service)
        row = bench.measure(
            load,
            group=size,
            path="direct",
            placement="every process on every core"
            if hashing
            else f"{service} core 0; ghz, stores, other services core 1",
            pid=platform.pid(service),
            client_cpus=ALL_CPUS if hashing else OTHER_CPUS,
        )
        row.extra["persons"] = persons
    # Challenges expire after 5 minutes: made just before step 2 is measured.
    platform.place(None)
    channels = Channels(*(platform.address(s) for s in ("auth", "binding", "sms", "face")))
    try:
        sample = _sample(persons, parity)[:CHALLENGES]
        challenges = login_challenges(channels, [_person(i) for i in sample], len(sample))
    finally:
        channels.close()
    _reference(bench, platform, f"login-complete-sms {size}")
    platform.place("auth")
    row = bench.measure(
        ghz.Load(
            f"login-complete-sms {size}",
            "etax.auth.v1.AuthService.CompleteLoginWithCode",
            platform.address("auth"),
            base="login-complete-sms",
            data=[as_json(c) for c in challenges],
            total=len(challenges),
        ),
        group=size,
        path="direct",
        placement="auth core 0; ghz, stores, other services core 1",
        pid=platform.pid("auth"),
        client_cpus=OTHER_CPUS,
    )
    row.extra["persons"] = persons


def _over(large: float | None, small: float | None) -> float | None:
    return large / small if large and small else None


def _speed(reference: Row) -> tuple[float | None, float | None]:
    """A reference's time per call and CPU per call: the echo's p50 and CPU, or the raw
    hash's time and CPU per hash."""
    if "ms_per_hash_per_core" in reference.extra:
        return reference.extra["ms_per_hash_per_core"], reference.server_cpu_us
    return reference.p50_ms, reference.server_cpu_us


def compare(bench: Bench, small: str, large: str) -> list[dict[str, Any]]:
    """Per RPC: p50 and CPU per call at the large size over the small one, raw and
    corrected by the same ratio of the reference measured just before each."""

    def measured(size: str, base: str) -> tuple[Row, Row]:
        name = f"{base} {size}"
        row = bench.row(name)
        return row, next(r for r in bench.rows if r.group == REFERENCE and r.name.endswith(name))

    found = []
    for row in [r for r in bench.rows if r.group == large]:
        base = row.name.split()[0]
        large_row, large_ref = measured(large, base)
        small_row, small_ref = measured(small, base)
        p50, cpu = (
            _over(large_row.p50_ms, small_row.p50_ms),
            _over(large_row.server_cpu_us, small_row.server_cpu_us),
        )
        (large_time, large_cpu), (small_time, small_cpu) = _speed(large_ref), _speed(small_ref)
        speed_p50, speed_cpu = _over(large_time, small_time), _over(large_cpu, small_cpu)
        p50_corrected = p50 / speed_p50 if p50 and speed_p50 else None
        cpu_corrected = cpu / speed_cpu if cpu and speed_cpu else None
        found.append(
            {
                "rpc": base,
                "reference": large_ref.name.split(" before ")[0],
                "p50_small_ms": small_row.p50_ms,
                "p50_large_ms": large_row.p50_ms,
                "cpu_small_us": small_row.server_cpu_us,
                "cpu_large_us": large_row.server_cpu_us,
                "p50_ratio": p50,
                "cpu_ratio": cpu,
                "reference_p50_ratio": speed_p50,
                "reference_cpu_ratio": speed_cpu,
                "p50_corrected": p50_corrected,
                "cpu_corrected": cpu_corrected,
                "met": p50_corrected is not None
                and cpu_corrected is not None
                and max(p50_corrected, cpu_corrected) <= SIZE_RATIO,
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
    with running_platform(
        workdir / "platform", "production", gateway_overrides=UNLIMITED
    ) as platform:
        env = platform.env
        loader = bulk.BulkLoader(
            bulk.Databases.of(env),
            Keyring.parse(
                env["ETAX_PII_KEYS"], env["ETAX_PII_ACTIVE_KEY_ID"], env["ETAX_PII_INDEX_KEY"]
            ),
            HmacKeyring.parse(
                env["ETAX_BINDING_INDEX_KEYS"], env["ETAX_BINDING_INDEX_ACTIVE_KEY_ID"]
            ),
        )
        timings: dict[str, float] = {}
        try:
            clock = datetime.now(CST)
            loader.load(0, SMALL, bench.log)
            timings["load_small_seconds"] = (datetime.now(CST) - clock).total_seconds()
            _measure_size(bench, platform, SMALL, 0, small)
            clock = datetime.now(CST)
            loader.load(SMALL, args.persons, bench.log)
            timings["load_large_seconds"] = (datetime.now(CST) - clock).total_seconds()
            _measure_size(bench, platform, args.persons, 1, large)
        except Exception:
            print(platform.logs(), file=sys.stderr)
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
        "rows": [asdict(r) for r in bench.rows],
        "comparison": compare(bench, small, large),
    }


def _label(persons: int) -> str:
    if persons % 1_000_000 == 0:
        return f"{persons // 1_000_000}M"
    return f"{persons // 1000}k"


def _persons(row: dict[str, Any]) -> str:
    persons = row["extra"].get("persons")
    return "" if persons is None else f"{persons:,}"


def _num(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


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
        f"- Bulk load (COPY): {small} in {timings.get('load_small_seconds', 0):.0f} s, the rest "
        f"up to {results['persons']:,} in {timings.get('load_large_seconds', 0):.0f} s; each "
        "person with a phone, a session and a refresh token; per 20 persons a client "
        "enterprise, an agency with an agreement and a cross-region project (bench/bulk.py); "
        "each load ends with ANALYZE, VACUUM and CHECKPOINT and waits (90 s at most) for the "
        "machine's load average to fall under 1 before its RPCs are measured",
        f"- {results['seconds_per_scenario']:g} s per throughput scenario at 50 calls in flight",
    ]
    if results.get("note"):
        lines.append(f"- **Note: {results['note']}**")
    lines += [
        "",
        f"## {large} over {small} (target: p50 and CPU per call <= {SIZE_RATIO:g} x)",
        "",
        "Each ratio is corrected by the same ratio of a reference measured just before "
        "each RPC at each size: the RPC's fair ceiling (the platform echo on the service's "
        "core plus the one Redis script, PostgreSQL statement or gRPC hop it cannot avoid, "
        "against the same stores), or the raw Argon2id rate for login-start. The verdict is "
        "on the corrected ratios.",
        "",
        f"| RPC | p50 ms at {small} | at {large} | ratio | reference | corrected | "
        f"CPU µs/call at {small} | at {large} | ratio | reference | corrected | verdict |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in results["comparison"]:
        lines.append(
            f"| {c['rpc']} | {_num(c['p50_small_ms'])} | {_num(c['p50_large_ms'])} | "
            f"{_num(c['p50_ratio'])} | {_num(c.get('reference_p50_ratio'))} | "
            f"**{_num(c.get('p50_corrected'))}** | {_num(c['cpu_small_us'], 0)} | "
            f"{_num(c['cpu_large_us'], 0)} | {_num(c['cpu_ratio'])} | "
            f"{_num(c.get('reference_cpu_ratio'))} | **{_num(c.get('cpu_corrected'))}** | "
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
            f"| {r['name']} | {_persons(r)} | {r['count']:,.0f} | "
            f"{r['rps']:,.0f} | {_num(r['p50_ms'])} | {_num(r['p90_ms'])} | "
            f"{_num(r['p99_ms'])} | {_num(r['server_cpu_us'], 0)} |"
        )
    lines += [
        "",
        "Placement as in bench/report.md: the service under test on core 0 and everything "
        "else on core 1, login step 1 on every core. Requests go to persons spread over the "
        "whole loaded range (odd persons at the large size, even ones at the small, so "
        "single-use refresh tokens and challenges never meet); ListMyIdentities uses one "
        "person's token, as ghz sends one metadata object. SMS sends go to new phones and "
        "face tickets are made just before, so neither meets a person: their ratios show "
        "what the machine and the stores did between the sizes. The rows named "
        '"... before <scenario>" are the references (the fair ceiling\'s echo on the '
        "service's core with every platform process on the other; the raw hash rate on "
        "every core).",
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
