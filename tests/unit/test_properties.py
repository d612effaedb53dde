"""Property-based tests of the pure parts: quota arithmetic, SSE usage extraction, Slurm parsing, catalog checks."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from launcher.core.catalog import catalog_from_dict, time_limit_seconds
from launcher.core.catalog_fields import CatalogError
from launcher.core.settings import KeyLimits
from launcher.slurm.parse import (
    SlurmError, job_from_json, parse_duration_s, parse_sbatch_output, split_key_values,
)
from router.accounting import limits as quota
from router.upstream.usage import SseTap, usage_from_json

NOW = 1_790_000_000.0  # a fixed instant, 2026-09-21
limits_st = st.builds(
    KeyLimits, rpm=st.none() | st.integers(0, 50), tpm=st.none() | st.integers(0, 5000),
    max_parallel=st.none() | st.integers(0, 8), daily_tokens=st.none() | st.integers(0, 20000),
    monthly_tokens=st.none() | st.integers(0, 50000),
)


# --- quota arithmetic ----------------------------------------------------------------------

@given(limits=limits_st, wanted=st.integers(-10, 10**7))
def test_reservation_fits_the_tightest_limit_and_is_at_least_one(limits: KeyLimits, wanted: int) -> None:
    reserve = quota.reservation(limits, wanted)
    caps = [c for c in (limits.tpm, limits.daily_tokens, limits.monthly_tokens) if c is not None]
    assert reserve >= 1
    assert reserve == max(1, min([wanted, *caps]))


# One step: admit a request wanting N tokens, or finish the oldest in flight having used a fraction of it.
steps_st = st.lists(st.tuples(st.booleans(), st.integers(0, 3000), st.floats(0, 1), st.floats(0, 30)),
                    max_size=60)


@settings(max_examples=300)
@given(limits=limits_st, steps=steps_st)
def test_admitted_requests_never_overshoot_a_limit(limits: KeyLimits, steps: list[tuple[bool, int, float, float]]) -> None:
    """Whatever the interleaving, reservations plus real use stay within every limit, and all settle to zero."""
    st_ = quota.KeyState(NOW)
    now = NOW
    in_flight: list[tuple[float, int]] = []
    for admit, wanted, fraction, dt in steps:
        now += dt
        quota.roll(st_, now)
        if admit or not in_flight:
            reserve = quota.reservation(limits, wanted)
            if quota.refusal(st_, limits, reserve, False, now) is None:
                quota.charge(st_, reserve)
                in_flight.append((now, reserve))
        else:
            admitted_at, reserved = in_flight.pop(0)
            used = int(reserved * fraction)  # a backend never returns more than max_tokens allowed
            quota.settle(st_, admitted_at, reserved, used, now)
            quota.add_usage(st_.today, used, 0, 0, 0.0)
            quota.add_usage(st_.month, used, 0, 0, 0.0)
        _assert_within(st_, limits)
    for admitted_at, reserved in in_flight:
        quota.settle(st_, admitted_at, reserved, 0, now)
    assert st_.in_flight == 0 and st_.tok_reserved == 0 and st_.day_reserved == 0 and st_.month_reserved == 0


def _assert_within(st_: quota.KeyState, limits: KeyLimits) -> None:
    if limits.tpm is not None:
        assert st_.tok_used + st_.tok_reserved <= limits.tpm
    if limits.daily_tokens is not None:
        assert st_.today.tokens + st_.day_reserved <= limits.daily_tokens
    if limits.monthly_tokens is not None:
        assert st_.month.tokens + st_.month_reserved <= limits.monthly_tokens
    if limits.max_parallel is not None:
        assert st_.in_flight <= limits.max_parallel
    if limits.rpm is not None:
        assert st_.req_count <= limits.rpm


@given(seconds=st.floats(-5, 10**7, allow_nan=False))
def test_durations_round_up_and_read_back(seconds: float) -> None:
    text = quota.fmt_duration(seconds)
    assert re.fullmatch(r"0s|\d+ms|(\d+h)?(\d+m)?\d+s", text), text
    if text.endswith("ms"):
        assert seconds <= int(text[:-2]) / 1000 < seconds + 0.001 + 1e-9
        return
    parts = dict((unit, int(n)) for n, unit in re.findall(r"(\d+)([hms])", text))
    total = parts.get("h", 0) * 3600 + parts.get("m", 0) * 60 + parts.get("s", 0)
    assert max(seconds, 0) <= total < max(seconds, 0) + 1
    assert quota.retry_after(seconds) >= max(1, seconds)


@given(t=st.floats(0, 4_000_000_000))
def test_month_bounds_contain_the_instant(t: float) -> None:
    start, end = quota.month_bounds(t)
    assert start <= t < end and 28 * 86400 <= end - start <= 31 * 86400


# --- SSE usage extraction ------------------------------------------------------------------

usage_st = st.fixed_dictionaries({"prompt_tokens": st.integers(0, 10**6), "completion_tokens": st.integers(0, 10**6),
                                  "completion_tokens_details": st.fixed_dictionaries(
                                      {"reasoning_tokens": st.integers(0, 10**5)})})
text_st = st.text(st.characters(codec="utf-8", exclude_characters="\r"), max_size=30)


def _event(doc: Any, crlf: bool) -> bytes:
    end = b"\r\n\r\n" if crlf else b"\n\n"
    return b"data: " + json.dumps(doc).encode() + end


@settings(max_examples=300)
@given(pieces=st.lists(text_st, max_size=12), usage=st.none() | usage_st, strip=st.booleans(),
       crlf=st.booleans(), cuts=st.lists(st.integers(0, 10_000), max_size=8))
def test_sse_tap_passes_bytes_through_and_finds_the_usage(
    pieces: list[str], usage: dict[str, Any] | None, strip: bool, crlf: bool, cuts: list[int],
) -> None:
    """However the stream is cut into reads, the output is the input minus (optionally) the usage event."""
    events = [_event({"choices": [{"delta": {"content": p}}], "usage": None}, crlf) for p in pieces]
    usage_event = _event({"choices": [], "usage": usage}, crlf) if usage is not None else b""
    done = b"data: [DONE]\r\n\r\n" if crlf else b"data: [DONE]\n\n"
    stream = b"".join(events) + usage_event + done
    tap = SseTap(strip_usage=strip, prompt_estimate=7)
    out = b""
    bounds = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    for a, b in zip(bounds, bounds[1:]):
        out += tap.feed(stream[a:b])
    out += tap.finish()
    expected = stream.replace(usage_event, b"") if strip and usage_event else stream
    assert out == expected
    result = tap.result()
    if usage is None:
        assert result.estimated and result.completion_tokens == len(pieces) and result.prompt_tokens == 7
    else:
        assert not result.estimated
        assert (result.prompt_tokens, result.completion_tokens, result.reasoning_tokens) == (
            usage["prompt_tokens"], usage["completion_tokens"], usage["completion_tokens_details"]["reasoning_tokens"])


@given(usage=usage_st, pad=st.integers(0, 40_000), choices=st.lists(text_st, max_size=5))
def test_usage_from_json_finds_the_usage_in_small_and_large_answers(
    usage: dict[str, Any], pad: int, choices: list[str],
) -> None:
    doc = {"id": "x", "choices": [{"message": {"content": c}} for c in choices], "pad": "p" * pad, "usage": usage}
    found = usage_from_json(json.dumps(doc).encode())
    assert found is not None
    assert (found.prompt_tokens, found.completion_tokens) == (usage["prompt_tokens"], usage["completion_tokens"])


@given(body=st.binary(max_size=300))
def test_usage_from_json_never_raises_on_garbage(body: bytes) -> None:
    try:
        usage_from_json(body)
    except (ValueError, TypeError) as exc:  # a usage object of the wrong shape may not parse
        pytest.fail(f"usage_from_json raised {exc!r} on {body!r}")


# --- Slurm output parsing ------------------------------------------------------------------

@given(d=st.integers(0, 400), h=st.integers(0, 23), m=st.integers(0, 59), s=st.integers(0, 59),
       shape=st.sampled_from(["M", "M:S", "H:M:S", "D-H", "D-H:M", "D-H:M:S"]))
def test_slurm_durations_agree_between_the_two_parsers(d: int, h: int, m: int, s: int, shape: str) -> None:
    values = {"D": d, "H": h, "M": m, "S": s}
    text = re.sub(r"[DHMS]", lambda x: f"{values[x.group(0)]:02d}", shape)
    expected = {"M": m * 60, "M:S": m * 60 + s, "H:M:S": h * 3600 + m * 60 + s, "D-H": d * 86400 + h * 3600,
                "D-H:M": d * 86400 + h * 3600 + m * 60, "D-H:M:S": d * 86400 + h * 3600 + m * 60 + s}[shape]
    assert parse_duration_s(text) == expected
    assert time_limit_seconds(text) == expected


@given(text=st.text(max_size=20))
def test_slurm_duration_parser_never_raises(text: str) -> None:
    value = parse_duration_s(text)
    assert value is None or value >= 0


@given(job_id=st.integers(1, 10**9), cluster=st.none() | st.from_regex(r"[a-z][a-z0-9_-]{0,10}", fullmatch=True),
       noise=st.lists(st.sampled_from(["", "  ", "sbatch: warning: something"]), max_size=2))
def test_sbatch_job_id_is_the_last_line(job_id: int, cluster: str | None, noise: list[str]) -> None:
    line = f"{job_id};{cluster}" if cluster else str(job_id)
    assert parse_sbatch_output("\n".join([*noise, line, ""])) == str(job_id)


@given(text=st.text(max_size=60))
def test_sbatch_parser_raises_only_slurm_error(text: str) -> None:
    try:
        assert parse_sbatch_output(text).isdigit()
    except SlurmError:
        pass


@given(fields=st.dictionaries(st.from_regex(r"[A-Z][A-Za-z]{0,12}", fullmatch=True),
                              st.lists(st.from_regex(r"[a-z0-9()/._-]{1,8}", fullmatch=True), min_size=1, max_size=3),
                              min_size=1, max_size=8))
def test_scontrol_key_values_round_trip(fields: dict[str, list[str]]) -> None:
    line = " ".join(f"{k}={' '.join(words)}" for k, words in fields.items())
    assert split_key_values(line) == {k: " ".join(words) for k, words in fields.items()}


@given(job_id=st.integers(1, 10**9), code=st.integers(0, 255), signal=st.integers(0, 64),
       new_shape=st.booleans(), state=st.sampled_from(["FAILED", "COMPLETED", "RUNNING", "CANCELLED"]))
def test_exit_codes_in_both_json_shapes(job_id: int, code: int, signal: int, new_shape: bool, state: str) -> None:
    if new_shape:
        exit_code: Any = {"status": ["EXITED"], "return_code": {"set": True, "infinite": False, "number": code},
                          "signal": {"id": {"set": bool(signal), "infinite": False, "number": signal}}}
        job: dict[str, Any] = {"job_id": {"set": True, "infinite": False, "number": job_id}, "job_state": [state],
                               "exit_code": exit_code}
    else:
        job = {"job_id": job_id, "job_state": state, "exit_code": signal if signal else code << 8}
    info = job_from_json(job)
    assert info.job_id == str(job_id) and info.state == state
    if state in ("RUNNING",):
        assert info.exit_code is None
    else:
        assert info.exit_code == (128 + signal if signal else code)


# --- catalog validation --------------------------------------------------------------------

toml_value = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**6) | st.text(max_size=12)
    | st.sampled_from(["vllm", "whisper", "command", "chat", "01:00:00", "${HOME}", "${UNSET_VAR_X}"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
field_names = st.sampled_from(["engine", "kind", "weights", "names", "gpus", "nodes", "time", "replicas",
                               "start_deadline", "max_tokens", "capabilities", "env", "command", "on_demand",
                               "engine_args", "served_name", "dimensions", "bogus"])


@settings(max_examples=400)
@given(models=st.dictionaries(st.text(max_size=10), st.dictionaries(field_names, toml_value, max_size=6)
                              | toml_value, max_size=3),
       top=st.dictionaries(st.sampled_from(["models", "other"]), toml_value, max_size=1))
def test_catalog_validation_fails_only_with_catalog_errors(models: dict[str, Any], top: dict[str, Any]) -> None:
    """Any TOML-shaped input is either a catalog or a CatalogError naming the source, never a crash."""
    data = {**top, "models": models} if "other" not in top else top
    try:
        catalog = catalog_from_dict(data, "fuzz.toml", {"HOME": "/home/x"})
    except CatalogError as exc:
        assert "fuzz.toml" in str(exc)
        return
    for name, entry in catalog.entries.items():
        assert entry.name == name and entry.gpus >= 1 and entry.engine in ("vllm", "whisper", "command")


@given(gpus=st.integers(1, 8), replicas=st.integers(0, 4), engine=st.sampled_from(["vllm", "whisper"]),
       name=st.from_regex(r"[a-z][a-z0-9.-]{0,15}", fullmatch=True))
def test_valid_catalog_entries_keep_their_values(gpus: int, replicas: int, engine: str, name: str) -> None:
    table = {"engine": engine, "weights": "/models/w", "gpus": gpus, "replicas": replicas, "time": "02:00:00"}
    entry = catalog_from_dict({"models": {name: table}}, "ok.toml", {}).entries[name]
    assert (entry.gpus, entry.replicas, entry.time, entry.engine) == (gpus, replicas, "02:00:00", engine)
    assert entry.kind == ("transcription" if engine == "whisper" else "chat")
