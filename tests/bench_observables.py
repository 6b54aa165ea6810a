"""Benchmark: indicator extraction on the labelled chat corpus, per library and per kind.

    .venv/bin/python -m tests.bench_observables            # precision/recall, time per message
    .venv/bin/python -m tests.bench_observables --sync     # + the 20,000-post sync's flow run,
                                                           #   extraction off and on

Compared: the connector's extractor (iocsearcher + chat filters), iocsearcher alone,
ioc-finder alone, and ioc-finder with the filters that need no position (addresses, hosts,
file names, domains inside URLs). Corpus: tests/observables_corpus/messages.jsonl (written by
tests/observables_corpus/make.py). Targets: precision >= 0.97, recall >= 0.95 per kind; the
sync's flow run at most +15% with extraction on. Not a test: times depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from mattermost_connector.observables.extract import (
    DOMAIN,
    EMAIL,
    URL,
    Filters,
    _file_name,
    address_kept,
    extract,
    host_kept,
)

CORPUS = Path(__file__).parent / "observables_corpus" / "messages.jsonl"
SERVER = "chat.acme-corp.net"
KINDS = [
    "ipv4-addr", "ipv6-addr", "domain-name", "url", "email-addr",
    "file:md5", "file:sha1", "file:sha256", "file:sha512", "vulnerability",
]  # fmt: skip
Label = tuple[str, str]


def load() -> list[tuple[str, set[Label]]]:
    rows = [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines()]
    return [(row["text"], {(k, v.lower()) for k, v in row["expected"]}) for row in rows]


def ours(text: str) -> set[Label]:
    found = extract(text, Filters(server_host=SERVER))
    return {
        (f"file:{f.algorithm.lower().replace('-', '')}" if f.algorithm else f.kind, f.value.lower())
        for f in found
    }


_IOCSEARCHER_KINDS = {
    "ip4": "ipv4-addr", "ip6": "ipv6-addr", "fqdn": "domain-name", "url": "url",
    "email": "email-addr", "md5": "file:md5", "sha1": "file:sha1", "sha256": "file:sha256",
    "cve": "vulnerability",
}  # fmt: skip


def iocsearcher_alone(text: str) -> set[Label]:
    from iocsearcher.searcher import Searcher

    global _SEARCHER
    try:
        searcher = _SEARCHER
    except NameError:
        searcher = _SEARCHER = Searcher()
    return {
        (_IOCSEARCHER_KINDS[name], value.lower())
        for name, value, _start, _raw in searcher.search_raw(text, targets=set(_IOCSEARCHER_KINDS))
    }


_FINDER_KINDS = {
    "ipv4s": "ipv4-addr", "ipv6s": "ipv6-addr", "domains": "domain-name", "urls": "url",
    "email_addresses": "email-addr", "md5s": "file:md5", "sha1s": "file:sha1",
    "sha256s": "file:sha256", "sha512s": "file:sha512", "cves": "vulnerability",
}  # fmt: skip


def ioc_finder_alone(text: str) -> set[Label]:
    from ioc_finder import find_iocs

    found = find_iocs(text)
    return {(kind, v.lower()) for key, kind in _FINDER_KINDS.items() for v in found.get(key, [])}


def ioc_finder_filtered(text: str) -> set[Label]:
    """ioc-finder with the chat filters that need no position in the text."""
    filters = Filters(server_host=SERVER)
    found = ioc_finder_alone(text)
    hosts = set()
    for kind, value in found:
        if kind == URL:
            hosts.add((urlsplit(value).hostname or "").lower())
        elif kind == EMAIL:
            hosts.add(value.rsplit("@", 1)[-1])
    kept = set()
    for kind, value in found:
        if kind in ("ipv4-addr", "ipv6-addr") and not address_kept(value, filters):
            continue
        if kind == DOMAIN and (
            value in hosts or _file_name(value) or not host_kept(value, filters)
        ):
            continue
        if kind == URL and not host_kept(urlsplit(value).hostname or "", filters):
            continue
        if kind == EMAIL and not host_kept(value.rsplit("@", 1)[-1], filters):
            continue
        kept.add((kind, value))
    return kept


EXTRACTORS: dict[str, Callable[[str], set[Label]]] = {
    "connector (iocsearcher + chat filters)": ours,
    "iocsearcher 3.1.0 alone": iocsearcher_alone,
    "ioc-finder 9.4.1 alone": ioc_finder_alone,
    "ioc-finder 9.4.1 + position-free filters": ioc_finder_filtered,
}


def score(extractor: Callable[[str], set[Label]], corpus: list[tuple[str, set[Label]]]):
    tp, fp, fn = Counter(), Counter(), Counter()
    misses: list[str] = []
    extractor(corpus[0][0])  # warm: compiled patterns, TLD list
    started = time.perf_counter()
    for text, expected in corpus:
        found = extractor(text)
        for kind, _ in found & expected:
            tp[kind] += 1
        for kind, value in found - expected:
            fp[kind] += 1
            misses.append(f"  FP {kind} {value!r} in {text[:70]!r}")
        for kind, value in expected - found:
            fn[kind] += 1
            misses.append(f"  FN {kind} {value!r} in {text[:70]!r}")
    per_message = (time.perf_counter() - started) / len(corpus)
    return tp, fp, fn, per_message, misses


def table(corpus: list[tuple[str, set[Label]]], verbose: bool) -> None:
    print(f"{len(corpus)} messages, {sum(len(e) for _, e in corpus)} labelled indicators\n")
    print("| extractor | " + " | ".join(KINDS) + " | µs/message |")
    print("|---|" + "---|" * (len(KINDS) + 1))
    for name, extractor in EXTRACTORS.items():
        tp, fp, fn, per_message, misses = score(extractor, corpus)
        cells = []
        for kind in KINDS:
            p = tp[kind] / (tp[kind] + fp[kind]) if tp[kind] + fp[kind] else 0.0
            r = tp[kind] / (tp[kind] + fn[kind]) if tp[kind] + fn[kind] else 0.0
            cells.append(f"P {p:.2f} R {r:.2f}")
        print(f"| {name} | " + " | ".join(cells) + f" | {per_message * 1e6:,.0f} |")
        if verbose:
            print("\n".join(misses))


def public_indicator(index: int, rng) -> str:
    """A post naming a public address: one observable and its link per post."""
    return f"post {index}: C2 at 45.{index % 200}.{rng.randint(1, 250)}[.]{rng.randint(1, 250)}"


def sync_cost(repeat: int) -> None:
    """The 20,000-post sync (tests/bench.py: 200 files, directory mode), its flow run with
    extraction off and on; with bench.py's posts (a documentation address each: extracted,
    then left out) and with a public address in each post (one observable per post)."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from tests import bench

    print("\n| posts (20,000) | flow run, extraction off (s) | on (s) | extra |")
    print("|---|---:|---:|---:|")
    with prefect_test_harness(server_startup_timeout=120):
        api = PREFECT_API_URL.value()
        for name, text in (
            ("documentation address each", bench.indicator_text),
            ("public address each", public_indicator),
        ):
            sim, channel = bench.seed(20_000, 200, text)
            times: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(repeat):
                for on in (False, True):
                    settings = {"MATTERMOST_EXTRACT_OBSERVABLES": str(on).lower()}
                    run = bench.sync_once(sim, channel, "directory", api, settings)
                    times[on].append(run[1])
            sim.stop()
            off, on_ = statistics.median(times[False]), statistics.median(times[True])
            print(f"| {name} | {off:.1f} | {on_:.1f} | {(on_ / off - 1) * 100:+.0f}% |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", action="store_true", help="list every miss")
    parser.add_argument("--sync", action="store_true", help="also the 20,000-post sync's cost")
    parser.add_argument("--repeat", type=int, default=3, help="syncs per setting (median)")
    args = parser.parse_args()
    table(load(), args.verbose)
    if args.sync:
        sync_cost(args.repeat)


if __name__ == "__main__":
    main()
