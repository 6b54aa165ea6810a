"""Extraction happens in the read-ahead task (tasks/prefetch.py), batch after batch of about
BATCH_POSTS posts; kept for the name the tests and benchmarks import it by."""

from __future__ import annotations

from mattermost_connector.pipeline.channel import BATCH_POSTS

__all__ = ["BATCH_POSTS"]
