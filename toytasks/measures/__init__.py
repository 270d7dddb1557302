"""Progress measures: pure functions of (model, task, fixed evaluation data) -> named numbers."""
