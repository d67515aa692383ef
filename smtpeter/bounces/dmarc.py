"""RFC 7489 DMARC aggregate reports: found in a received message, unpacked and read.

Pure functions over bytes (no I/O): ``parse_report(message)`` takes a whole received e-mail (or
the report file itself: its XML, zip or gzip) and answers a ``DmarcReport``, or raises
``NotADmarcReport`` saying why it is not one.

Reports come from strangers, so every step has a limit: an attachment unpacks to at most
``MAX_XML`` bytes (zip and gzip bombs stop there, with no more than that in memory), the XML is
read without a DTD, entities or anything fetched (defusedxml: no billion laughs, no external
entities), and a report holds at most ``MAX_RECORDS`` records.
"""

from __future__ import annotations

import email
import email.message
import io
import re
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree
from defusedxml import DefusedXmlException

MAX_XML = 10 * 1024 * 1024  # bytes of XML one report may unpack to (Google's largest are a few MB)
MAX_RECORDS = 50_000
MAX_TEXT = 1024  # characters in one metadata field (an org name, a report id)
_LAST_SECOND = 253402300799  # 9999-12-31 23:59:59 UTC: a date range's times are printed as dates
_ZIP_MEMBERS = 16  # entries of a zip looked at for the report

_ZIP_TYPES = {"application/zip", "application/x-zip-compressed", "application/x-zip"}
_GZIP_TYPES = {"application/gzip", "application/x-gzip", "application/gzip-compressed"}
_XML_TYPES = {"text/xml", "application/xml"}
# An XML declaration, or the report's root element (perhaps with a namespace prefix).
_XML_START = re.compile(rb"<\?xml|<([A-Za-z_][\w.-]*:)?feedback[\s>]")
_REPORT_NAME = re.compile(r"\.(xml|xml\.gz|gz|zip)$", re.IGNORECASE)


class NotADmarcReport(ValueError):
    """The message holds no DMARC aggregate report we can read; the text says why."""


@dataclass(frozen=True)
class PolicyPublished:
    """The DMARC record of ``domain`` as the reporter found it in DNS."""

    domain: str
    p: str
    sp: str
    pct: int | None
    adkim: str
    aspf: str


@dataclass(frozen=True)
class AuthResult:
    """One DKIM signature or SPF check as the reporter's receivers saw it (``scope``: the DKIM
    selector, or the SPF identity checked: mfrom / helo)."""

    method: str  # "dkim" or "spf"
    domain: str
    scope: str
    result: str


@dataclass(frozen=True)
class DmarcRecord:
    """``count`` messages from ``source_ip`` that were judged alike."""

    source_ip: str
    count: int
    disposition: str
    dkim: str  # the DMARC-aligned DKIM result (policy_evaluated): pass or fail
    spf: str  # the same for SPF
    header_from: str
    envelope_from: str
    auth_results: tuple[AuthResult, ...]


@dataclass(frozen=True)
class DmarcReport:
    org_name: str
    email: str
    report_id: str
    begin: int  # the range reported on, in Unix seconds
    end: int
    policy: PolicyPublished
    records: tuple[DmarcRecord, ...]
    xml: bytes  # as it came, to serve back byte for byte

    @property
    def domain(self) -> str:
        """The domain the report is about (SMTPeter's FOR)."""
        return self.policy.domain

    @property
    def reporter(self) -> str:
        """The reporter's domain (SMTPeter's FROM): its e-mail address's, else its org name's."""
        return reporter_domain(self.org_name, self.email)

    @property
    def messages(self) -> int:
        return sum(r.count for r in self.records)

    @property
    def failed_spf(self) -> int:
        return sum(r.count for r in self.records if r.spf != "pass")

    @property
    def failed_dkim(self) -> int:
        return sum(r.count for r in self.records if r.dkim != "pass")

    @property
    def sending_domains(self) -> tuple[str, ...]:
        """The From domains of the messages reported on, each once, in the report's order."""
        return tuple(dict.fromkeys(r.header_from for r in self.records if r.header_from))

    def summary(self) -> dict[str, Any]:
        """The numbers of the ``dmarc`` log, and who reported on what."""
        return {
            "organizationName": self.org_name, "email": self.email, "reportId": self.report_id,
            "begin": self.begin, "end": self.end, "domain": self.domain,
            "sendingDomain": ";".join(self.sending_domains), "messages": self.messages,
            "failedSpf": self.failed_spf, "failedDkim": self.failed_dkim, "reporter": self.reporter,
            "policy": {"p": self.policy.p, "sp": self.policy.sp, "pct": self.policy.pct,
                       "adkim": self.policy.adkim, "aspf": self.policy.aspf},
            "records": len(self.records),
        }


def reporter_domain(org_name: str, address: str) -> str:
    """The domain a reporter is known by: its address's domain; an org name only if it is one."""
    domain = address.rpartition("@")[2].strip().strip(".").lower()
    if address.count("@") == 1 and _is_domain(domain):
        return domain
    name = org_name.strip().strip(".").lower()
    return name if _is_domain(name) else re.sub(r"[^a-z0-9.-]+", "-", name).strip("-") or "unknown"


_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def _is_domain(text: str) -> bool:
    labels = text.split(".")
    return len(labels) >= 2 and len(text) <= 253 and all(_LABEL.fullmatch(label) for label in labels)


# -- finding the report ------------------------------------------------------------------------------

def parse_report(message: bytes, *, max_xml: int = MAX_XML, max_records: int = MAX_RECORDS) -> DmarcReport:
    """The DMARC aggregate report in ``message``: a whole e-mail, or the report file itself.

    NotADmarcReport when there is none, or it is too large, malformed or not RFC 7489's.
    """
    if _packed(message) or _looks_like_xml(message):
        return parse_xml(unpack(message, "", max_xml), max_records=max_records)
    problem = "no report attachment (zip, gzip or XML)"
    for payload, name in _candidates(email.message_from_bytes(message)):
        try:
            return parse_xml(unpack(payload, name, max_xml), max_records=max_records)
        except NotADmarcReport as exc:
            problem = str(exc)  # another part may still be the report
    raise NotADmarcReport(problem)


def _candidates(message: email.message.Message) -> Iterator[tuple[bytes, str]]:
    """Parts that may hold the report, in the message's order: by type, name or content."""
    for part in message.walk():
        if part.is_multipart():
            continue
        content_type = part.get_content_type()
        name = part.get_filename() or ""
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        if (content_type in _ZIP_TYPES | _GZIP_TYPES | _XML_TYPES or _REPORT_NAME.search(name)
                or _packed(payload) or _looks_like_xml(payload)):
            yield payload, name


def _packed(data: bytes) -> bool:
    return data.startswith((b"PK\x03\x04", b"\x1f\x8b"))


def _looks_like_xml(data: bytes) -> bool:
    return _XML_START.match(data[:512].lstrip(b"\xef\xbb\xbf \t\r\n")) is not None


def unpack(data: bytes, name: str = "", max_xml: int = MAX_XML) -> bytes:
    """The XML inside ``data`` (zip, gzip or XML itself), at most ``max_xml`` bytes of it."""
    if data.startswith(b"PK\x03\x04"):
        return _unzip(data, max_xml)
    if data.startswith(b"\x1f\x8b"):
        return _gunzip(data, max_xml)
    if len(data) > max_xml:
        raise NotADmarcReport(f"the report is larger than {max_xml} bytes")
    if not _looks_like_xml(data):
        raise NotADmarcReport(f"{name or 'the attachment'} is neither zip, gzip nor XML")
    return data


def _unzip(data: bytes, max_xml: int) -> bytes:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = [m for m in archive.infolist()[:_ZIP_MEMBERS] if not m.is_dir()]
            # The report is the XML member; an archive of one file is taken whatever its name.
            chosen = [m for m in members if m.filename.lower().endswith(".xml")] or members[:1]
            if not chosen:
                raise NotADmarcReport("the zip archive is empty")
            # The size in the archive's directory is the sender's word: read, and stop at the limit.
            with archive.open(chosen[0]) as member:
                xml = member.read(max_xml + 1)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, EOFError,
            OSError, zlib.error) as exc:  # encrypted, unknown compression, truncated, corrupt
        raise NotADmarcReport(f"the zip archive cannot be read: {exc}") from None
    if len(xml) > max_xml:
        raise NotADmarcReport(f"the report unpacks to more than {max_xml} bytes")
    return xml


def _gunzip(data: bytes, max_xml: int) -> bytes:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip framing
    try:
        xml = inflater.decompress(data, max_xml + 1)  # never more than this in memory
    except zlib.error as exc:
        raise NotADmarcReport(f"the gzip data cannot be read: {exc}") from None
    if len(xml) > max_xml:
        raise NotADmarcReport(f"the report unpacks to more than {max_xml} bytes")
    if not inflater.eof:
        raise NotADmarcReport("the gzip data is truncated")
    return xml


# -- reading the XML ---------------------------------------------------------------------------------

def parse_xml(xml: bytes, *, max_records: int = MAX_RECORDS) -> DmarcReport:
    """RFC 7489 Appendix C's ``<feedback>`` (namespaced or not); NotADmarcReport otherwise."""
    try:
        root = defusedxml.ElementTree.fromstring(xml, forbid_dtd=True, forbid_entities=True,
                                                 forbid_external=True)
    except DefusedXmlException as exc:
        raise NotADmarcReport(f"the XML is refused: {type(exc).__name__}") from None
    except (ParseError, ValueError) as exc:
        raise NotADmarcReport(f"the XML is malformed: {exc}") from None
    if _local(root.tag) != "feedback":
        raise NotADmarcReport(f"the XML is a <{_local(root.tag)[:40]}>, not a DMARC <feedback>")
    metadata = _required(root, "report_metadata")
    policy = _required(root, "policy_published")
    date_range = _required(metadata, "date_range")
    elements = [child for child in root if _local(child.tag) == "record"]
    if len(elements) > max_records:
        raise NotADmarcReport(f"the report has more than {max_records} records")
    return DmarcReport(
        org_name=_text(metadata, "org_name", required=True),
        email=_text(metadata, "email"),
        report_id=_text(metadata, "report_id", required=True),
        begin=_integer(date_range, "begin", _LAST_SECOND),
        end=_integer(date_range, "end", _LAST_SECOND),
        policy=PolicyPublished(
            domain=_domain(_text(policy, "domain", required=True)),
            p=_text(policy, "p").lower(), sp=_text(policy, "sp").lower(),
            pct=_integer(policy, "pct") if _child(policy, "pct") is not None else None,
            adkim=_text(policy, "adkim").lower(), aspf=_text(policy, "aspf").lower()),
        records=tuple(_record(element) for element in elements),
        xml=xml,
    )


def _record(element: Element) -> DmarcRecord:
    row = _required(element, "row")
    evaluated = _required(row, "policy_evaluated")
    identifiers = _child(element, "identifiers")
    results = _child(element, "auth_results")
    auth = tuple(
        AuthResult(method=_local(result.tag), domain=_domain(_text(result, "domain")),
                   scope=_text(result, "selector" if _local(result.tag) == "dkim" else "scope"),
                   result=_text(result, "result").lower())
        for result in (results if results is not None else ()) if _local(result.tag) in ("dkim", "spf"))
    return DmarcRecord(
        source_ip=_text(row, "source_ip"),
        count=_integer(row, "count"),
        disposition=_text(evaluated, "disposition").lower(),
        dkim=_text(evaluated, "dkim").lower(),
        spf=_text(evaluated, "spf").lower(),
        header_from=_domain(_text(identifiers, "header_from")) if identifiers is not None else "",
        envelope_from=_domain(_text(identifiers, "envelope_from")) if identifiers is not None else "",
        auth_results=auth,
    )


def _local(tag: Any) -> str:
    """A tag without its namespace (DMARCbis reports have one); comments' tags are not strings."""
    return tag.rpartition("}")[2] if isinstance(tag, str) else ""


def _child(parent: Element, name: str) -> Element | None:
    return next((child for child in parent if _local(child.tag) == name), None)


def _required(parent: Element, name: str) -> Element:
    found = _child(parent, name)
    if found is None:
        raise NotADmarcReport(f"<{_local(parent.tag)}> has no <{name}>")
    return found


def _text(parent: Element, name: str, required: bool = False) -> str:
    found = _child(parent, name)
    value = " ".join((found.text or "").split()) if found is not None else ""
    if required and not value:
        raise NotADmarcReport(f"<{_local(parent.tag)}> has no <{name}>")
    if len(value) > MAX_TEXT:
        raise NotADmarcReport(f"<{name}> is longer than {MAX_TEXT} characters")
    return value


def _integer(parent: Element, name: str, maximum: int = 2**53) -> int:
    value = _text(parent, name, required=True)
    try:
        number = int(value)
    except ValueError:
        raise NotADmarcReport(f"<{name}> is not a whole number: {value[:40]!r}") from None
    if not 0 <= number <= maximum:
        raise NotADmarcReport(f"<{name}> is out of range: {number}")
    return number


def _domain(value: str) -> str:
    return value.strip().rstrip(".").lower()
