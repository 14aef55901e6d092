"""Per provider model limits (llm.limits): calls in flight shared by every process, tokens
per minute, back-pressure after a provider 429, and slots of crashed holders expiring."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
from django_redis import get_redis_connection

from llm.limits import (
    ModelLimits,
    ProviderBusy,
    model_limits,
    provider_backoff,
    provider_backoff_remaining,
    provider_slot,
)
from tests.support import ROOT, server_env

MODEL = "probe-model"


def slots_held() -> int:
    key = next(iter(get_redis_connection("default").keys(f"*:llm:slots:{MODEL}")), None)
    return 0 if key is None else int(get_redis_connection("default").zcard(key))


def test_model_limits_parse(settings) -> None:
    settings.LLM_MODEL_LIMITS = "fake-small=200:1000000, fake-large=50"
    assert model_limits("fake-small") == ModelLimits(in_flight=200, tokens_per_minute=1_000_000)
    assert model_limits("fake-large") == ModelLimits(in_flight=50, tokens_per_minute=0)
    assert model_limits("other") == ModelLimits()  # unlimited by default


@pytest.mark.parametrize("spec", ["fake-small", "fake-small=lots", "=3", "a=1:2:3"])
def test_model_limits_reject_garbage(settings, spec: str) -> None:
    settings.LLM_MODEL_LIMITS = spec
    with pytest.raises(ValueError, match="LLM_MODEL_LIMITS"):
        model_limits("fake-small")


def test_unlimited_by_default_takes_no_slot(settings) -> None:
    settings.LLM_MODEL_LIMITS = ""
    with provider_slot(MODEL, timeout_s=0) as first, provider_slot(MODEL, timeout_s=0):
        assert first.model == MODEL
        assert slots_held() == 0


def test_slots_are_released_and_a_full_model_times_out(settings) -> None:
    settings.LLM_MODEL_LIMITS = f"{MODEL}=2"
    with provider_slot(MODEL, timeout_s=1), provider_slot(MODEL, timeout_s=1):
        assert slots_held() == 2
        with pytest.raises(ProviderBusy) as busy, provider_slot(MODEL, timeout_s=0.2):
            pass
        assert busy.value.reason == "calls in flight at the limit"
        assert busy.value.retry_after_s >= 1
    assert slots_held() == 0
    with provider_slot(MODEL, timeout_s=0):
        assert slots_held() == 1


def test_a_slot_is_released_when_the_call_raises(settings) -> None:
    settings.LLM_MODEL_LIMITS = f"{MODEL}=1"
    with pytest.raises(RuntimeError), provider_slot(MODEL, timeout_s=1):
        raise RuntimeError("provider exploded")
    assert slots_held() == 0


def test_threads_never_exceed_the_limit(settings) -> None:
    settings.LLM_MODEL_LIMITS = f"{MODEL}=3"
    lock = threading.Lock()
    state = {"now": 0, "max": 0}

    def call() -> None:
        with provider_slot(MODEL, timeout_s=30):
            with lock:
                state["now"] += 1
                state["max"] = max(state["max"], state["now"])
            time.sleep(0.05)
            with lock:
                state["now"] -= 1

    threads = [threading.Thread(target=call) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert state["max"] == 3


def test_backoff_pauses_every_call_to_the_model(settings) -> None:
    settings.LLM_MODEL_LIMITS = ""  # back-pressure applies to unlimited models too
    provider_backoff(MODEL, 0.6)
    assert 0 < provider_backoff_remaining(MODEL) <= 0.6
    with pytest.raises(ProviderBusy) as busy, provider_slot(MODEL, timeout_s=0.1):
        pass
    assert busy.value.reason == "back-off after a provider 429"
    with provider_slot(MODEL, timeout_s=5) as slot:
        assert slot.waited_s >= 0.4  # it waited the pause out instead of calling
    with provider_slot("another-model", timeout_s=0) as other:
        assert other.waited_s < 0.5  # other models are not paused


def test_a_shorter_backoff_never_shortens_a_longer_one() -> None:
    provider_backoff(MODEL, 30)
    provider_backoff(MODEL, 1)
    assert provider_backoff_remaining(MODEL) > 25


def test_tokens_per_minute_per_model(settings) -> None:
    settings.LLM_MODEL_LIMITS = f"{MODEL}=10:1000"
    with provider_slot(MODEL, timeout_s=0, tokens=400) as first:
        first.record_tokens(100)  # the provider reported fewer than estimated
    with provider_slot(MODEL, timeout_s=0, tokens=400), provider_slot(MODEL, timeout_s=0, tokens=400):
        pass
    with pytest.raises(ProviderBusy) as busy, provider_slot(MODEL, timeout_s=0.2, tokens=400):
        pass
    assert busy.value.reason == "tokens per minute at the limit"
    assert slots_held() == 0  # the slot taken before the tokens was given back


def test_a_held_slot_is_renewed_past_its_ttl(settings) -> None:
    settings.LLM_MODEL_LIMITS = f"{MODEL}=1"
    settings.LLM_SLOT_TTL_S = 3
    with provider_slot(MODEL, timeout_s=0):
        time.sleep(4.5)  # longer than the TTL: the renewer keeps it
        with pytest.raises(ProviderBusy), provider_slot(MODEL, timeout_s=0):
            pass


def test_slots_fail_open_when_redis_is_down(settings) -> None:
    settings.LLM_MODEL_LIMITS = f"{MODEL}=1:10"
    settings.CACHES = {
        "default": {
            **settings.CACHES["default"],
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.2, "SOCKET_TIMEOUT": 0.2},
        }
    }
    provider_backoff(MODEL, 30)  # logged, not raised
    with provider_slot(MODEL, timeout_s=0, tokens=100), provider_slot(MODEL, timeout_s=0, tokens=100):
        pass  # both run: an outage does not stop the workers' calls


def _process(*args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.llm.slot_holder", *args],
        cwd=ROOT,
        env=server_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.django_db
def test_a_crashed_holders_slot_frees_itself(settings) -> None:
    settings.LLM_MODEL_LIMITS = f"{MODEL}=1"
    holder = _process("crash", MODEL, LLM_MODEL_LIMITS=f"{MODEL}=1", LLM_SLOT_TTL_S="3")
    output, _ = holder.communicate(timeout=30)
    assert "held" in output and holder.returncode == -9
    with pytest.raises(ProviderBusy), provider_slot(MODEL, timeout_s=0):
        pass  # the dead process still holds it, for now
    with provider_slot(MODEL, timeout_s=10) as slot:
        assert slot.waited_s <= 3.5  # freed within the holder's TTL


@pytest.mark.django_db
def test_two_worker_processes_share_the_limit_exactly(settings) -> None:
    """Two processes x 6 threads x 4 calls against a limit of 4 calls in flight: the
    count across both processes (a Redis probe the holders bump) reaches 4, never 5."""
    env = {"LLM_MODEL_LIMITS": f"{MODEL}=4"}
    workers = [_process("hold", MODEL, "6", "4", "0.1", **env) for _ in range(2)]
    outputs = [worker.communicate(timeout=120)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    assert all("calls=24" in output for output in outputs), outputs
    client = get_redis_connection("default")
    assert int(client.get("probe:max") or 0) == 4
    assert int(client.get("probe:inflight") or 0) == 0
    assert slots_held() == 0
