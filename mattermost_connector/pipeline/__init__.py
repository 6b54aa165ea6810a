"""One channel's pipeline as plain Python, for any driver (the scheduled sync's flow, a flow
run per channel on another worker, a live listener): `ChannelPipeline` exposes its steps
over explicit `Services`, `ordered` holds the ordered-delivery invariant, `cursors` the
cursor each bundle carries and the backfill window's cut. Prefect tasks (tasks/) wrap the
steps with retries, names and logging; flows/ orchestrate them."""

from mattermost_connector.pipeline.channel import ChannelPipeline, Opened, Services

__all__ = ["ChannelPipeline", "Opened", "Services"]
