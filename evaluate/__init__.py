"""zoomshot.evaluate: zero-shot metrics from cached features, reports (JSON, CSV, Markdown, PNG)."""
