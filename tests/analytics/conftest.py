"""The pipeline's process fixtures (real workers and beat), for analytics' slow tests."""

from tests.pipeline.conftest import start_beat, start_worker

__all__ = ["start_beat", "start_worker"]
