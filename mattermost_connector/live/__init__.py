"""Live mode's domain: Mattermost's WebSocket (`socket`), the listener that reconnects and
resumes it (`listener`), the channels its events make due (`due`) and the edits and deletions
witnessed without a gap (`witness`). No Prefect here: flows/live.py drives it."""
