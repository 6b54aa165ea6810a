"""Indicators of compromise in chat messages (opt-in: MATTERMOST_EXTRACT_OBSERVABLES).

Only what the bundle planner and the pipeline need lives here, so that neither imports the
extractor (iocsearcher and its dependencies) unless extraction is on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mattermost_connector.config import MattermostSettings
    from mattermost_connector.observables.stix import Observable

# The STIX types of the indicators found (a CVE: vulnerability), in the order settings list them.
IPV4, IPV6, DOMAIN, URL, EMAIL, FILE, CVE = (
    "ipv4-addr",
    "ipv6-addr",
    "domain-name",
    "url",
    "email-addr",
    "file",
    "vulnerability",
)
KINDS = (IPV4, IPV6, DOMAIN, URL, EMAIL, FILE, CVE)

# What one post's indicators may add to its bundle, objects and links together (about 350
# indicators): observables_of stops there, and a thread root keeps this much more room.
MAX_BYTES_PER_POST = 256 * 1024


def observer_for(
    settings: MattermostSettings,
) -> Callable[[Mapping[str, Any]], Sequence[Observable]] | None:
    """The indicators of each post for iter_bundles, when the deployment extracts them."""
    if not settings.extract_observables:
        return None
    from mattermost_connector.integration_posts import shown_text
    from mattermost_connector.observables.stix import observer

    return observer(
        settings.observable_kinds,
        settings.domain,
        settings.observable_private_addresses,
        text_of=shown_text,  # an integration post's attachments as its content shows them
    )
