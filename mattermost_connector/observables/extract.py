"""Indicators an analyst pastes in chat, found by iocsearcher and filtered for chat.

iocsearcher (the extractor of the GoodFATR study) finds and refangs the candidates; what it
cannot know about a chat is filtered here: file names that end in a TLD (`run.sh`), version
numbers that look like addresses, the Mattermost server's own host and permalinks, @mentions,
private, reserved and documentation addresses, example domains (RFC 2606, RFC 6761), commit
ids in a code review, and identifiers in code (`self.name`). Precision first: a chat is not a
report, and each value kept becomes an entity in OpenCTI.
"""

from __future__ import annotations

import ipaddress
import re
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import NamedTuple
from urllib.parse import urlsplit

from iocsearcher.searcher import Searcher, can_normalize

from mattermost_connector.observables import CVE, DOMAIN, EMAIL, FILE, IPV4, IPV6, KINDS, URL

HASH_ALGORITHMS = {"md5": "MD5", "sha1": "SHA-1", "sha256": "SHA-256", "sha512": "SHA-512"}
_TARGETS = {
    "ip4": IPV4,
    "ip6": IPV6,
    "fqdn": DOMAIN,
    "url": URL,
    "email": EMAIL,
    "cve": CVE,
    **dict.fromkeys(HASH_ALGORITHMS, FILE),
}


class Found(NamedTuple):
    """One indicator, refanged: `algorithm` names a file hash's (STIX hash name)."""

    kind: str
    value: str
    algorithm: str = ""


@dataclass(frozen=True)
class Filters:
    """What a deployment decides: the kinds wanted, the server's host (its own links are no
    indicator), and whether private addresses (RFC 1918, RFC 4193, CGNAT, link-local) count."""

    kinds: frozenset[str] = frozenset(KINDS)
    server_host: str = ""
    private_addresses: bool = False


# Defanging iocsearcher does not undo itself: `[:]`, `[://]`, `hxxp` before `[:]`. Two passes,
# each only where a substring says it may apply: a scheme (`hxxp`, `h[tt]p`, `hxtp`, `fxp`
# before a colon, defanged or not), then the bracketed marks. No match of one can overlap a
# match of the other, so this is the one pass of tests/test_observables.py's reference; a
# single pattern of every style costs several times more per line (SRE tries each at every
# position).
_SCHEME = re.compile(r"\b(?:(hxxp|h\[tt\]p|hxtp)(s?)|fxp)(?=:|\[:|\(:)", re.I)
_MARKS = re.compile(
    r"\[:\]|\(:\)|\[colon\]|\[:?//\]|\(:?//\)|\[at\]|\(at\)|\[@\]|\(@\)"
    r"|\[\.\]|\(\.\)|\[dot\]|\(dot\)|\{\.\}|\[\.",
    re.I,
)
_MARK_VALUES = {
    **dict.fromkeys(("[:]", "(:)", "[colon]"), ":"),
    **dict.fromkeys(("[//]", "(//)"), "//"),
    **dict.fromkeys(("[://]", "(://)"), "://"),
    **dict.fromkeys(("[at]", "(at)", "[@]", "(@)"), "@"),
    **dict.fromkeys(("[.]", "(.)", "[dot]", "(dot)", "{.}", "[."), "."),
}


def _scheme(match: re.Match[str]) -> str:
    return "ftp" if match.group(1) is None else "http" + match.group(2)


def _mark(match: re.Match[str]) -> str:
    return _MARK_VALUES[match.group().lower()]


_HASH_NAMES = ("md5", "sha1", "sha256", "sha512")
_SHA512 = r"\b([a-f0-9]{128})\b"

# RFC 2606 and RFC 6761 names, and .local (RFC 6762) / .internal / .lan: never an indicator
_RESERVED_TLDS = {"example", "test", "invalid", "localhost", "local", "internal", "lan", "home"}
_EXAMPLE_DOMAINS = {"example.com", "example.net", "example.org", "example.edu"}
# Extensions that are also TLDs (IANA): `run.sh`, `notes.md`, `setup.zip` are file names
_FILE_EXTENSIONS = {
    "zip", "mov", "sh", "py", "pl", "rs", "md", "so", "ps", "cc", "cs", "ml", "pm", "rb", "ts",
    "kt", "sc", "jar", "app", "dll", "bin", "bat", "exe", "msi", "log", "cfg", "ini", "tar",
}  # fmt: skip
# Any label like these makes a dotted name a file name (`invoice.docx.zip`)
_DOCUMENT_LABELS = {
    "pdf", "doc", "docx", "docm", "xls", "xlsx", "xlsm", "ppt", "pptx", "txt", "csv", "json",
    "xml", "yaml", "yml", "png", "jpg", "jpeg", "gif", "tar", "gz", "tgz", "7z", "rar", "iso",
    "img", "exe", "dll", "js", "lnk", "hta", "vbs", "ps1", "msi", "py", "sh", "bat", "apk",
}  # fmt: skip
# In code, `obj.attr` is an identifier: these TLDs are also common attribute names
_CODE_TLDS = {
    "name", "id", "email", "app", "page", "link", "run", "to", "new", "host", "group", "style",
    "show", "help", "post", "call", "save", "read", "play", "date", "data", "hash", "type",
    "map", "get", "set", "items", "keys", "list", "is", "in", "at", "it", "do",
}  # fmt: skip
# Words before a version number (`version 1.2.3.4`, `v1.2.3.4`), matched at the end of what
# precedes it (str.endswith: a regex anchored at the end scans every position)
_VERSION_WORDS = {"v", "ver", "ver.", "version", "release", "build", "patch", "patched",
                  "firmware", "kernel"}  # fmt: skip
_VERSION_PHRASES = (" upgrade to", " upgraded to", " update to", " updated to", " fixed in")
_COMMIT_CONTEXT = re.compile(
    r"\b(?:commits?|committed|merged?|merging|revert(?:ed|s)?|cherry-pick(?:ed)?|rebased?"
    r"|git|HEAD|fixup|squash(?:ed)?|bisect|blame|pull request|PR)\b|/commit/|\bPR\s*#",
)
_CODE_FENCE = re.compile(r"```.*?(?:```|\Z)|`[^`\n]+`", re.S)


class _Candidate(NamedTuple):
    name: str  # iocsearcher's target name
    value: str  # normalised, a URL rearmed only (as written, refanged)
    start: int
    end: int
    raw: str  # as written: defanged or not


class _Searcher(Searcher):
    """iocsearcher with SHA-512 added, CVE ids in any case (`cve-2021-44228` in chat), and
    addresses checked for syntax only: whether a private address counts is this
    deployment's choice (`Filters.private_addresses`)."""

    def __init__(self) -> None:
        super().__init__()
        self.add_regexp("sha512", re.compile(_SHA512, re.I))
        self.remove_regexps("cve")
        self.add_regexp("cve", re.compile(r"\bCVE-[0-9]{4}-[0-9]{4,7}\b", re.I))
        rearmed = {"email", "fqdn", "ip4", "ip4Net", "url"}  # as search_matches decides
        self._steps = {
            name: (
                getattr(self, "rearm_" + name) if name in rearmed else None,
                getattr(self, "is_valid_" + name) if name in self.validate else None,
                # a URL is taken as written (rearmed): its normalised form is not needed
                getattr(self, "normalize_" + name)
                if name in can_normalize and name != "url"
                else None,
            )
            for name in self.patterns
        }

    def matches(self, text: str, targets: Iterable[str]) -> Iterator[_Candidate]:
        """search_matches' candidates (its patterns, rearming, checks and normalising) without
        what costs most of its time on a chat line: a debug message formatted for every
        match though never logged, a lookup of each step by name for each match, the
        normalised form of a URL (urlparse), which is not used here."""
        for name in targets:
            rearm, valid, normal = self._steps[name]
            for regex in self.patterns[name]:
                group = 1 if regex.groups else 0
                for match in regex.finditer(text):
                    raw = match.group(group)
                    value = rearm(raw) if rearm is not None else raw
                    if valid is not None and not valid(value):
                        continue
                    start = match.start(group)
                    final = normal(value) if normal is not None else value
                    yield _Candidate(name, final, start, start + len(raw), raw)

    @classmethod
    def rearm_dots(cls, s: str) -> str:
        """iocsearcher's, skipped where none of its marks can be (each holds `[` or `(`):
        the text is refanged before it is searched."""
        if "[" not in s and "(" not in s:
            return s
        return cls.re_dots.sub(".", s)

    @classmethod
    def is_valid_ip4(cls, s: str, *args: object, **kwargs: object) -> bool:
        return True  # its pattern takes only four octets of 0-255

    def is_valid_url(self, s: str) -> bool:
        """iocsearcher's check, but a URL on a private address is the filters' to judge
        (the library's own check drops it, through Searcher's address checks)."""
        if super().is_valid_url(s):
            return True
        try:
            parts = urlsplit(s if "://" in s[:15] else "http://" + s)
            ipaddress.ip_address(parts.hostname or "")
        except ValueError:
            return False
        return parts.scheme.lower() in self.schemes

    @classmethod
    def is_valid_ip6(cls, s: str, *args: object, **kwargs: object) -> bool:
        return _is_address(s, 6)


@lru_cache(maxsize=8192)  # chats repeat addresses; ipaddress parses slowly
def _is_address(value: str, version: int) -> bool:
    try:
        return ipaddress.ip_address(value).version == version
    except ValueError:
        return False


@cache
def _searcher() -> _Searcher:
    return _Searcher()  # reads IANA's TLD list once


def refang(text: str) -> str:
    """The defanging styles iocsearcher leaves to its caller, undone."""
    lowered = text.lower()
    if "hx" in lowered or "fxp" in lowered or "h[tt]p" in lowered:
        text = _SCHEME.sub(_scheme, text)
    if "[" in text or "(" in text or "{" in text:
        text = _MARKS.sub(_mark, text)
    return text


def _code_spans(text: str) -> list[tuple[int, int]]:
    return [match.span() for match in _CODE_FENCE.finditer(text)] if "`" in text else []


def _within(position: int, spans: Iterable[tuple[int, int]]) -> bool:
    return any(start <= position < end for start, end in spans)


def _line_before(text: str, position: int) -> str:
    """The line up to `position`: a review names the commit before its id."""
    return text[text.rfind("\n", 0, position) + 1 : position]


def address_kept(value: str, filters: Filters) -> bool:
    """Public addresses always; private ones when configured; loopback, documentation,
    multicast, unspecified and reserved ranges never."""
    return _address_kept(value, filters.private_addresses)


@lru_cache(maxsize=8192)  # chats repeat addresses
def _address_kept(value: str, private_addresses: bool) -> bool:
    number = _ipv4_number(value)
    if number is not None:  # ipaddress's checks are most of a message's time: a table
        index = bisect_right(_IPV4_STARTS, number) - 1
        if index >= 0 and number <= _IPV4_SPECIAL[index][1]:
            return _IPV4_SPECIAL[index][2] and private_addresses
        return True
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return False
    if address.is_global:
        return True
    if (
        address.is_loopback
        or address.is_multicast
        or address.is_unspecified
        or address.is_reserved
        or _documentation(address)
    ):
        return False
    return private_addresses


_DOTTED_QUAD = re.compile(r"(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})", re.A)


def _ipv4_number(value: str) -> int | None:
    quad = _DOTTED_QUAD.fullmatch(value)
    if quad is None:
        return None
    a, b, c, d = map(int, quad.groups())
    if max(a, b, c, d) > 255:
        return None
    return (a << 24) | (b << 16) | (c << 8) | d


def _ipv4_range(network: str, private: bool) -> tuple[int, int, bool]:
    block = ipaddress.IPv4Network(network)
    return int(block.network_address), int(block.broadcast_address), private


_PRIVATE_V4 = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16")
_NEVER_V4 = (
    "0.0.0.0/8", "127.0.0.0/8", "192.0.0.0/24", "192.0.2.0/24", "198.18.0.0/15",
    "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
)  # fmt: skip
# IANA's special-purpose IPv4 ranges: private ones (kept when configured), the rest never;
# by start, for bisect (they do not overlap: tests/test_observables.py)
_IPV4_SPECIAL = sorted(
    [_ipv4_range(n, True) for n in _PRIVATE_V4] + [_ipv4_range(n, False) for n in _NEVER_V4]
)
_IPV4_STARTS = [start for start, _, _ in _IPV4_SPECIAL]

_DOCUMENTATION = [
    ipaddress.ip_network(n)
    for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32", "3fff::/20")
]


def _documentation(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return any(address.version == n.version and address in n for n in _DOCUMENTATION)


def host_kept(host: str, filters: Filters) -> bool:
    """A domain, URL or mail host that names something outside: not the chat server, not an
    example or local name, and (as an address) not a private one unless configured."""
    host = host.lower().rstrip(".").strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return address_kept(host, filters)
    labels = host.split(".")
    if labels[-1] in _RESERVED_TLDS or ".".join(labels[-2:]) in _EXAMPLE_DOMAINS:
        return False
    server = filters.server_host.lower()
    return not (server and (host == server or host.endswith("." + server)))


def _file_name(value: str) -> bool:
    labels = value.lower().split(".")
    return labels[-1] in _FILE_EXTENSIONS or any(label in _DOCUMENT_LABELS for label in labels)


def _defanged(raw: str) -> bool:
    return raw != refang(raw) or any(mark in raw for mark in ("[", "(", "{"))


Tests = tuple[tuple[Callable[[str], object], tuple[str, ...]], ...]


def _candidates(text: str, tests: Tests) -> list[_Candidate]:
    """iocsearcher's candidates for the targets whose cheap test says the text may hold one."""
    wanted = [name for may_hold, names in tests if may_hold(text) for name in names]
    if not wanted:
        return []
    return list(_searcher().matches(text, wanted))


def _has_scheme(text: str) -> bool:
    return "://" in text  # a URL needs its scheme, refanged: see _url


def _has_at(text: str) -> bool:
    return "@" in text


# A cheap test that text could hold a target at all: most chat lines hold none. The hashes
# share one (a run of 32 hex digits), run once
_MAY_HOLD: dict[str, Callable[[str], object]] = {
    "ip4": re.compile(r"\d\.\d").search,
    "ip6": re.compile(r"[0-9a-fA-F]:[0-9a-fA-F]*:").search,
    "fqdn": re.compile(r"[A-Za-z0-9]\.[A-Za-z]").search,
    "cve": re.compile(r"CVE-", re.I).search,
    "url": _has_scheme,
    "email": _has_at,
    **dict.fromkeys(_HASH_NAMES, re.compile(r"[0-9a-fA-F]{32}").search),
}


@lru_cache(maxsize=64)
def _plan(filters: Filters) -> Tests:
    """iocsearcher's targets for the kinds wanted, grouped by their cheap test, once per
    deployment's filters."""
    targets = [name for name, kind in _TARGETS.items() if kind in filters.kinds]
    if URL not in filters.kinds and DOMAIN in filters.kinds:
        targets.append("url")  # a URL's host is not a domain of its own: the URL is needed
    if EMAIL not in filters.kinds and DOMAIN in filters.kinds:
        targets.append("email")
    grouped: dict[Callable[[str], object], list[str]] = {}
    for name in targets:
        grouped.setdefault(_MAY_HOLD[name], []).append(name)
    return tuple((test, tuple(names)) for test, names in grouped.items())


def extract(text: str, filters: Filters = Filters()) -> list[Found]:
    """The indicators of one message's text, refanged, in order of first appearance, each
    once."""
    if not text:
        return []
    original = text
    text = refang(text)
    candidates = _candidates(text, _plan(filters))
    if not candidates:
        return []
    code = _code_spans(text)
    containers = [(c.start, c.end) for c in candidates if c.name in _CONTAINERS]
    if len(candidates) > 1:
        candidates.sort(key=_start)
    found: dict[Found, None] = {}
    for candidate in candidates:
        kind = _TARGETS[candidate.name]
        if kind not in filters.kinds:
            continue
        item = _judge(candidate, kind, text, code, containers, filters, original)
        if item is not None:
            found.setdefault(item)
    return list(found)


_CONTAINERS = ("url", "email")  # whose host is no indicator of its own


def _start(candidate: _Candidate) -> int:
    return candidate.start


def _judge(
    candidate: _Candidate,
    kind: str,
    text: str,
    code: list[tuple[int, int]],
    containers: list[tuple[int, int]],
    filters: Filters,
    original: str,
) -> Found | None:
    """The candidate as an indicator, or None when chat context says it is not one."""
    value, start = candidate.value, candidate.start
    if kind in (IPV4, IPV6):
        if containers and any(s <= start < e for s, e in containers):
            return None  # a URL's host: the URL is the indicator
        if kind == IPV4 and _version(text, candidate):
            return None
        return Found(kind, value) if address_kept(value, filters) else None
    if kind == FILE:
        if candidate.name == "sha1" and _COMMIT_CONTEXT.search(_line_before(text, start)):
            return None
        return Found(kind, value.lower(), HASH_ALGORITHMS[candidate.name])
    if kind == CVE:
        return Found(kind, value.upper())
    if kind == URL:
        return _url(candidate, filters)
    if kind == EMAIL:
        host = value.rsplit("@", 1)[-1]
        return Found(kind, value.lower()) if host_kept(host, filters) else None
    return _domain(candidate, text, code, containers, filters, original)


_NUMBER_GOES_ON = re.compile(r"\.\d|\d")  # `1.2.3.4.5`, `1.2.3.45` cut short
_LABEL_GOES_ON = re.compile(r"\.\w")  # `a.b` followed by `.c`: a path or an identifier


def _version(text: str, candidate: _Candidate) -> bool:
    """`version 1.2.3.4`, `v1.2.3.4`, `Chrome/10.4.2.1`, `1.2.3.4.5`: not addresses."""
    before = text[max(0, candidate.start - 24) : candidate.start]
    if before.endswith("/") and before[-2:-1].isalpha():
        return True  # a product's version: Chrome/10.4.2.1
    tail = " " + before.rstrip().lower()
    last_word = tail.rsplit(None, 1)[-1] if tail.strip() else ""
    if last_word in _VERSION_WORDS or tail.endswith(_VERSION_PHRASES):
        return True
    after = text[candidate.end : candidate.end + 2]
    return bool(_NUMBER_GOES_ON.match(after))


def _domain(
    candidate: _Candidate,
    text: str,
    code: list[tuple[int, int]],
    containers: list[tuple[int, int]],
    filters: Filters,
    original: str,
) -> Found | None:
    """A domain on its own: not the host of a URL or mail address found around it, not a
    mention, a path's part, a call or a file name, nor an identifier in code."""
    start, end = candidate.start, candidate.end
    if any(s <= start < e for s, e in containers):
        return None
    if text[start - 1 : start] in ("@", "/", "\\", "-", "_") and start > 0:
        return None
    following = text[end : end + 2]
    if following[:1] in ("(", "/", "-") or _LABEL_GOES_ON.match(following):
        return None
    value = candidate.value.lower()
    if not _written_defanged(candidate, original):
        if _file_name(value):
            return None
        if _within(start, code) and not _quoted(text, candidate):
            labels = candidate.value.split(".")
            if labels[-1] in _CODE_TLDS or any(not label.islower() for label in labels):
                return None
    return Found(DOMAIN, value) if host_kept(value, filters) else None


_DEFANGED_DOT = r"(?:\[\.\]|\(\.\)|\[dot\]|\(dot\)|\{\.\})"


def _written_defanged(candidate: _Candidate, original: str) -> bool:
    """Whether the analyst defanged it: then it is meant as a domain, whatever it ends in."""
    if _defanged(candidate.raw):
        return True
    labels = [re.escape(label) for label in candidate.value.split(".")]
    return bool(re.search(_DEFANGED_DOT.join(labels), original, re.I))


def _quoted(text: str, candidate: _Candidate) -> bool:
    return (
        text[candidate.start - 1 : candidate.start] in "\"'"
        and text[candidate.end : candidate.end + 1] in "\"'"
    )


def _url(candidate: _Candidate, filters: Filters) -> Found | None:
    value = candidate.value
    if "://" not in value[:16]:
        return None  # `host/path` without a scheme: a path or a file more often than a URL
    value = value.rstrip(".,;:!?)]}'\"")
    try:
        parts = urlsplit(value)
        host = parts.hostname or ""
    except ValueError:
        return None
    if not host or not host_kept(host, filters):
        return None
    if "/pl/" in parts.path and host == filters.server_host.lower():
        return None
    return Found(URL, value)
