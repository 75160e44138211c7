"""zoomshot.evaluate: zero-shot metrics from cached features, and reports (JSON, CSV, Markdown, PNG)."""
from .metrics import zero_shot_logits
from .report import read_results, write_report
from .scoring import evaluate, record_key

__all__ = ["evaluate", "write_report", "zero_shot_logits", "read_results", "record_key"]
