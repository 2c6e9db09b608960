"""Counters and a latency histogram for /metrics, rendered by hand in the Prometheus text format."""

import threading
from collections import Counter, defaultdict
from typing import Any

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """Counters and a latency histogram, rendered by hand in the Prometheus text format."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: Counter = Counter()  # (route, method, status) -> n
        self.latency: dict[str, list[float]] = {}  # route -> bucket counts + [sum, count]
        self.tokens: Counter = Counter()  # (model, kind) -> n
        self.outcomes: Counter = Counter()  # (model, finish_reason) -> n
        self.violations: Counter = Counter()  # model -> outputs that broke the client's schema (never sent as 200)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        with self.lock:
            self.requests[(route, method, status)] += 1
            hist = self.latency.setdefault(route, [0.0] * (len(LATENCY_BUCKETS) + 2))
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    hist[i] += 1
            hist[-2] += seconds
            hist[-1] += 1

    def add_result(self, model: str, prompt_tokens: int, completion_tokens: int, finish_reason: str) -> None:
        with self.lock:
            self.tokens[(model, "prompt")] += prompt_tokens
            self.tokens[(model, "completion")] += completion_tokens
            self.outcomes[(model, finish_reason)] += 1

    def add_violation(self, model: str) -> None:
        with self.lock:
            self.violations[model] += 1

    def render(self, engines: dict[str, Any]) -> str:
        out: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")

        with self.lock:
            family("schemabuild_http_requests_total", "counter", "HTTP requests by route, method and status.")
            for (route, method, status), n in sorted(self.requests.items()):
                out.append(f'schemabuild_http_requests_total{{route="{_esc(route)}",method="{method}",'
                           f'status="{status}"}} {n}')
            family("schemabuild_http_request_duration_seconds", "histogram", "Request latency by route.")
            for route, hist in sorted(self.latency.items()):
                r = _esc(route)
                for bound, n in zip(LATENCY_BUCKETS, hist):
                    out.append(f'schemabuild_http_request_duration_seconds_bucket{{route="{r}",le="{bound}"}} {int(n)}')
                out.append(f'schemabuild_http_request_duration_seconds_bucket{{route="{r}",le="+Inf"}} {int(hist[-1])}')
                out.append(f'schemabuild_http_request_duration_seconds_sum{{route="{r}"}} {hist[-2]:.6f}')
                out.append(f'schemabuild_http_request_duration_seconds_count{{route="{r}"}} {int(hist[-1])}')
            family("schemabuild_tokens_total", "counter", "Prompt and completion tokens by model.")
            for (model, kind), n in sorted(self.tokens.items()):
                out.append(f'schemabuild_tokens_total{{model="{_esc(model)}",kind="{kind}"}} {n}')
            family("schemabuild_completions_total", "counter", "Finished generations by model and finish reason.")
            for (model, reason), n in sorted(self.outcomes.items()):
                out.append(f'schemabuild_completions_total{{model="{_esc(model)}",finish_reason="{reason}"}} {n}')
            family("schemabuild_schema_violations_total", "counter",
                   "Outputs that did not validate against the client's json_schema (answered 422, never 200).")
            for model, n in sorted(self.violations.items()):
                out.append(f'schemabuild_schema_violations_total{{model="{_esc(model)}"}} {n}')
        out += _engine_metrics(engines)
        return "\n".join(out) + "\n"


def _esc(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _metric_name(key: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in key.lower()).strip("_")


def _engine_metrics(engines: dict[str, Any]) -> list[str]:
    """Engine.stats() as gauges: numbers become `schemabuild_engine_<key>`, {size: count} maps get a label."""
    samples: dict[str, list[str]] = defaultdict(list)
    for label, engine in engines.items():
        try:
            stats = engine.stats() or {}
        except Exception:  # noqa: BLE001 - metrics must never fail the scrape
            continue
        for key, value in stats.items():
            name = f"schemabuild_engine_{_metric_name(key)}"
            if isinstance(value, bool):
                value = int(value)
            if isinstance(value, (int, float)):
                samples[name].append(f'{name}{{engine="{_esc(label)}"}} {value}')
            elif isinstance(value, dict):
                tag = "size" if key == "batch_sizes" else "key"
                for k, v in value.items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool):
                        samples[name].append(f'{name}{{engine="{_esc(label)}",{tag}="{_esc(k)}"}} {v}')
    out = []
    for name, lines in sorted(samples.items()):
        out.append(f"# HELP {name} Decoder engine statistic.")
        out.append(f"# TYPE {name} gauge")
        out += lines
    return out
