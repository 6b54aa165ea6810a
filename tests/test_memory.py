"""Freed heap goes back to the system between batches (mattermost_connector/memory.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_freed_heap_is_returned_to_the_system():
    """A batch's worth of small objects freed but for a few survivors keeps its pages in
    glibc's heap until trimmed: the connector's resident memory then grew with each batch."""
    code = textwrap.dedent(
        """
        import gc
        from mattermost_connector.memory import release_free_memory

        def rss_kb():
            with open("/proc/self/status") as status:
                line = next(l for l in status if l.startswith("VmRSS:"))
            return int(line.split()[1])

        posts = [{"id": str(i), "message": "x" * 1000 + str(i)} for i in range(80_000)]
        survivors = posts[::500]  # a few objects pin the pages around them
        del posts
        gc.collect()
        before = rss_kb()
        assert release_free_memory()
        print(before - rss_kb())
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) > 20_000  # kB: most of the ~80 MB freed
