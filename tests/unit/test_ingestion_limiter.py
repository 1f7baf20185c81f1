from ingestion.limiter import AimdRateLimiter, LimiterSettings
from ingestion.publisher import ProducerSettings
from tests.unit.conftest import make_event


class FakeSignal:
    def __init__(self, values):
        self.values = list(values)

    def read(self):
        return self.values.pop(0) if self.values else None


SETTINGS = LimiterSettings(
    initial_rate=1000, min_rate=100, max_rate=2000, increase_step=100, decrease_factor=0.5, max_lag=500
)


def _rates(signal_values):
    limiter = AimdRateLimiter(SETTINGS, {"lag": (FakeSignal(signal_values), 500.0)})
    return [limiter.adjust() for _ in signal_values]


def test_converges_down_under_pressure_and_never_below_the_floor():
    rates = _rates([10_000] * 8)
    assert rates[:4] == [500, 250, 125, 100]
    assert min(rates) == SETTINGS.min_rate


def test_recovers_additively_when_healthy_up_to_the_ceiling():
    rates = _rates([10_000, 10_000] + [0] * 20)
    assert rates[:4] == [500, 250, 350, 450]
    assert rates[-1] == SETTINGS.max_rate


def test_an_unreadable_signal_changes_nothing():
    limiter = AimdRateLimiter(SETTINGS, {"lag": (FakeSignal([]), 500.0)})
    assert limiter.adjust() == SETTINGS.initial_rate


def test_any_signal_over_its_threshold_is_pressure():
    signals = {"lag": (FakeSignal([0, 0]), 500.0), "latency": (FakeSignal([0.2, 3.0]), 1.0)}
    limiter = AimdRateLimiter(SETTINGS, signals)
    assert [limiter.adjust(), limiter.adjust()] == [1100, 550]


def test_token_bucket_paces_to_the_rate_without_dropping():
    now = [0.0]
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        now[0] += seconds

    settings = LimiterSettings(initial_rate=100, min_rate=100, max_rate=100, interval_seconds=1000)
    limiter = AimdRateLimiter(settings, {}, clock=lambda: now[0])
    for _ in range(300):
        limiter.acquire(sleep=sleep)
    assert 2.9 <= now[0] <= 3.1  # 300 events at 100/s
    assert all(s > 0 for s in slept)


def test_keying_orders_funnel_events_by_user_and_leaves_the_rest_unkeyed():
    from ingestion.publisher import Publisher

    key_for = Publisher.key_for
    holder = type("P", (), {"_settings": ProducerSettings()})()
    assert key_for(holder, make_event(event_type="purchase", user_id="u7")) == b"u7"
    assert key_for(holder, make_event(event_type="page_view", product_id=None)) is None
    assert key_for(holder, make_event(event_type="search", product_id=None)) is None


def test_producer_config_is_safe_by_default():
    config = ProducerSettings().librdkafka_config()
    assert config["acks"] == "all" and config["enable.idempotence"] is True
    assert (config["linger.ms"], config["batch.size"]) == (10, 65_536)
