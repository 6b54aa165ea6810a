"""Writes messages.jsonl: chat-style messages, each with the indicators it holds (refanged).

    .venv/bin/python -m tests.observables_corpus.make

Hand-written phrasings of what analysts post (each kind, each defanging style, code blocks)
and of the traps a chat holds (file names, versions, permalinks, mentions, private and
documentation addresses, example domains, commit ids, identifiers in code), each filled three
times with different values from a fixed seed. The labels come from the placeholders: a
trap's placeholder adds no label, so the file is reviewable line by line.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import random
import re
from pathlib import Path

SERVER = "chat.acme-corp.net"
HERE = Path(__file__).parent
TEMPLATES = [
    # plain indicators
    "C2 at {ip4} again tonight",
    "seeing beacons to {ip4} and {ip4} from the DMZ",
    "blocklist updated: {dom}, {dom}",
    "phishing landing page {url}",
    "sender was {email}, reply-to {email}",
    "md5 {md5}",
    "SHA-1: {sha1}",
    "sample sha256 {sha256} uploaded to the sandbox",
    "sha512 of the dropper: {sha512}",
    "patched {cve} on all edge hosts?",
    "{cve} and {cve} are both exploited in the wild per CISA",
    "IPv6 C2 {ip6} seen in netflow",
    "also {ip6}",
    "v6 infra: {ip6}, {ip6_d}",
    "resolves to {ip4} (AS ownership unclear)",
    "new infra: {dom} -> {ip4}",
    "the loader pulls {url} then {url}",
    "Can someone check {dom}? Looks like typosquatting",
    "ioc dump:\n{ip4}\n{dom}\n{sha256}\n{email}",
    "hash list\n- {md5}\n- {sha1}\n- {sha256}",
    "{email} sent the invoice lure to finance",
    "VT has {sha256} at 45/70",
    "sinkholed {dom} this morning, traffic from {ip4}",
    # defanged
    "C2 at {ip4_d}",
    "beacon to {ip4_d} every 60s",
    "malicious domain {dom_d}",
    "Do not click {url_d}",
    "payload hosted at {url_d} and mirrored at {url_d}",
    "phish from {email_d}",
    "defanged list: {dom_d}, {ip4_d}, {url_d}",
    "exfil over https to {dom_d} ({ip4_d})",
    "they rotate domains: {dom_d} / {dom_d} / {dom_d}",
    "lure sender {email_d}, infra {dom_d}",
    "seen {url_d} in the proxy logs",
    # code blocks
    "```\n{ip4}\n{ip4}\n```",
    "from the pcap:\n```\nGET {url} HTTP/1.1\nHost: {dom}\n```",
    "```\ncurl -s {url} | sh\n```",
    "hashes:\n```\n{sha256}  payload.bin\n{md5}  loader.dll\n```",
    "inline `{ip4_d}` and `{dom}`",
    "yara hit on `{sha1}`",
    "```\n2024-03-01 12:00:01 DENY {ip4} -> {ip4} tcp/443\n```",
    '```json\n{{"indicator": "{dom}", "type": "domain"}}\n```',
    "```\nfrom: {email}\nsubject: urgent invoice\n```",
    "```\nnslookup {dom}\nAddress: {ip4}\n```",
    # traps: file names
    "see {filename} for details",
    "attached {filename} and {filename}",
    "the lure was {filename}, opened from the mail",
    "run {script} then check the output",
    "notes in {script}, will clean up",
    "user double-clicked {filename} from {dom_d}",
    "{filename} dropped by {sha256}",
    # traps: versions
    "upgraded to {version} yesterday",
    "still on version {version}, vulnerable to {cve}",
    "firmware {version} fixes it",
    "affected: v{version} and earlier",
    "chrome/{version} in the UA string",
    # traps: permalinks, server host, mentions
    "see {permalink} for the thread",
    "as discussed in {permalink}",
    "{mention} can you look at {ip4}?",
    "{mention} {mention} please triage",
    "thanks {mention}!",
    "ping {mention} about {dom_d}",
    "our chat is {server}, don't paste secrets",
    "login to https://{server}/login if the app hangs",
    # traps: private, reserved, documentation
    "scan from {priv4} is our own vuln scanner",
    "jump host {priv4}, DNS {priv4}",
    "docs use {doc4} as the example",
    "the printer at {priv4} again",
    "loopback 127.0.0.1 and {priv6} are fine",
    "lab range {doc4}, attacker {ip4}",
    "link-local {priv6} on eth0",
    "internal wiki http://{priv4}/wiki/ir",
    "dns {priv4} is ours, {ip4} is not",
    # traps: examples
    "template: replace {example} with the real domain",
    "mail {example_mail} is in the docs",
    "e.g. https://{example}/path",
    "test against {local} first",
    # traps: commit ids
    "fixed in commit {commit}",
    "merged {commit} into main",
    "git revert {commit} please, it broke the parser",
    "cherry-picked {commit} onto release",
    "PR #481 at {commit} changes the feed parser",
    # traps: code identifiers
    "```python\nname = {code}\nprint(user.name, obj.id)\n```",
    "```\nself.app = {code}\nconfig.email = None\n```",
    "in `request.json` the key is missing",
    "call `os.path.join` then `data.items`",
    # traps: plain chat
    "lunch at 12.30?",
    "meeting moved to 3.15, ok?",
    "we're at 99.9% coverage",
    "ratio 1.5:1 is fine",
    "lol. anyway.",
    "ok.thanks",
    "i.e. the usual",
    "score 4.5/5",
    "ETA 2h, then we sync again.",
    "No indicators in this one, just a status update.",
    # mixes
    "{mention} C2 {ip4_d} ({priv4} is ours), see {filename}",
    "version {version} phones home to {dom_d}",
    "{cve} PoC at {url_d}, hash {sha256}",
    "commit {commit} adds detection for {md5}",
    "thread {permalink}: sender {email_d} with {filename}",
    "proxy blocked {url} for {mention}",
    "`{sha1}` is the sample, not a commit",
    "the second stage {url_d} drops {sha512}",
    "IP {ip4} / {ip6} / {priv4}",
    "checked {example} and {dom}: only the second is bad",
]


class Filler:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.styles = 0

    def _word(self) -> str:
        syllables = ["ka", "lo", "mi", "tor", "zen", "qua", "rix", "bel", "dra", "vo", "nex", "ul"]
        return "".join(self.rng.choice(syllables) for _ in range(self.rng.randint(2, 4)))

    def _hex(self, n: int) -> str:
        return hashlib.sha512(str(self.rng.random()).encode()).hexdigest()[:n] * (n // 128 + 1)

    def ip4(self) -> str:
        while True:
            address = ipaddress.IPv4Address(self.rng.getrandbits(32))
            if address.is_global and not (address.is_multicast or address.is_reserved):
                return str(address)

    def ip6(self) -> str:
        return str(ipaddress.IPv6Address((0x2A00 << 112) | self.rng.getrandbits(100)))

    def dom(self) -> str:
        tld = self.rng.choice(["com", "net", "ru", "xyz", "info", "top", "biz", "cn", "online"])
        sub = self.rng.choice(["", "", "cdn.", "login.", "update."])
        return f"{sub}{self._word()}-{self._word()}.{tld}"

    def url(self) -> str:
        path = self.rng.choice(["/payload.bin", "/gate.php?id=7", "/a/b/c", "/", "/dl/x86"])
        return f"{self.rng.choice(['http', 'https'])}://{self.dom()}{path}"

    def email(self) -> str:
        return f"{self._word()}.{self._word()}@{self.dom()}"

    def defang_dots(self, value: str) -> str:
        self.styles += 1
        mark = ["[.]", "(.)", "[dot]"][self.styles % 3]
        return value.replace(".", mark)

    def defang_url(self, value: str) -> str:
        scheme, rest = value.split("://", 1)
        host, _, path = rest.partition("/")
        self.styles += 1
        style = self.styles % 4
        scheme = scheme.replace("http", "hxxp")
        colon = "[:]" if style in (1, 3) else ":"
        host = host.replace(".", ["[.]", "(.)", "[dot]", "[.]"][style])
        return f"{scheme}{colon}//{host}/{path}"

    def defang_email(self, value: str) -> str:
        local, host = value.split("@")
        self.styles += 1
        at = ["[@]", "[at]", "(@)"][self.styles % 3]
        return f"{local}{at}{host.replace('.', '[.]')}"


def fill(template: str, filler: Filler) -> tuple[str, list[list[str]]]:
    labels: list[list[str]] = []
    f = filler

    def value(name: str) -> str:
        if name == "ip4":
            v = f.ip4()
            labels.append(["ipv4-addr", v])
            return v
        if name == "ip4_d":
            v = f.ip4()
            labels.append(["ipv4-addr", v])
            return f.defang_dots(v)
        if name == "ip6":
            v = f.ip6()
            labels.append(["ipv6-addr", v])
            return v
        if name == "ip6_d":  # defanged as some feeds do: colons in brackets
            v = f.ip6()
            labels.append(["ipv6-addr", v])
            return v.replace(":", "[:]")
        if name == "dom":
            v = f.dom()
            labels.append(["domain-name", v])
            return v
        if name == "dom_d":
            v = f.dom()
            labels.append(["domain-name", v])
            return f.defang_dots(v)
        if name == "url":
            v = f.url()
            labels.append(["url", v])
            return v
        if name == "url_d":
            v = f.url()
            labels.append(["url", v])
            return f.defang_url(v)
        if name == "email":
            v = f.email()
            labels.append(["email-addr", v])
            return v
        if name == "email_d":
            v = f.email()
            labels.append(["email-addr", v])
            return f.defang_email(v)
        if name in ("md5", "sha1", "sha256", "sha512"):
            v = f._hex({"md5": 32, "sha1": 40, "sha256": 64, "sha512": 128}[name])[
                : {"md5": 32, "sha1": 40, "sha256": 64, "sha512": 128}[name]
            ]
            labels.append([f"file:{name}", v])
            return v
        if name == "cve":
            v = f"CVE-{f.rng.randint(2014, 2025)}-{f.rng.randint(1000, 99999)}"
            labels.append(["vulnerability", v])
            return v
        # traps: no label
        if name == "filename":
            return f.rng.choice(
                ["report.pdf", "invoice.docx.exe", "Q3-results.xlsx", "setup.zip", "photo.mov",
                 "invoice.docx.zip", "readme.txt", "scan_2024.pdf.lnk", "archive.tar.gz"]
            )  # fmt: skip
        if name == "script":
            return f.rng.choice(["collect.sh", "parse.py", "notes.md", "triage.ps1", "build.rs"])
        if name == "version":
            return f.rng.choice(["1.2.3.4", "10.4.2.1", "6.1.0.12", "2.0.0.1", "3.11.4.2"])
        if name == "permalink":
            post = "".join(f.rng.choice("abcdefghijkmnopqrstuwxyz13456789") for _ in range(26))
            return f"https://{SERVER}/{f.rng.choice(['secops', 'cti'])}/pl/{post}"
        if name == "server":
            return SERVER
        if name == "mention":
            return "@" + f.rng.choice(["john.doe", "alice.dev", "bob", "sec.ops", "m.info"])
        if name == "priv4":
            return f.rng.choice(["10.0.4.17", "192.168.1.20", "172.16.3.9", "100.64.2.1"])
        if name == "priv6":
            return f.rng.choice(["fe80::1ff:fe23:4567:890a", "fd12:3456:789a::1"])
        if name == "doc4":
            return f.rng.choice(["192.0.2.10", "198.51.100.7", "203.0.113.99"])
        if name == "example":
            return f.rng.choice(["example.com", "www.example.org", "evil.example", "foo.test"])
        if name == "example_mail":
            return f.rng.choice(["user@example.com", "admin@example.net"])
        if name == "local":
            return f.rng.choice(["printer.local", "dc01.corp.internal", "localhost"])
        if name == "commit":
            return f._hex(40)[:40]
        if name == "code":
            return f.rng.choice(['"x"', "get_name()", "app.run()", "None"])
        raise KeyError(name)

    text = re.sub(
        r"\{(\w+)\}",
        lambda m: value(m.group(1)),
        template.replace("{{", "\x00").replace("}}", "\x01"),
    )
    return text.replace("\x00", "{").replace("\x01", "}"), labels


def main() -> None:
    filler = Filler(25)
    rows = []
    for round_ in range(3):
        for index, template in enumerate(TEMPLATES):
            text, labels = fill(template, filler)
            rows.append({"id": f"{index:03d}-{round_}", "text": text, "expected": labels})
    with open(HERE / "messages.jsonl", "w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{len(rows)} messages")


if __name__ == "__main__":
    main()
