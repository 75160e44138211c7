"""zoomshot.evaluate: zero-shot metrics from cached features, reports (JSON, CSV, Markdown, PNG), sweeps."""
from .metrics import zero_shot_logits
from .report import read_results, write_report
from .scoring import evaluate, record_key

__all__ = ["evaluate", "write_report", "zero_shot_logits", "read_results", "record_key"]
