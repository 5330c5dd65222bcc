"""XML as admins' and servers' documents come: parsed safely, with line numbers.

AnyConnect profiles (ogsd.config.profile) and GlobalProtect portal configurations
(ogsd.config.gpportal) come from whoever runs the VPN, or over the network: DTDs, entity
declarations (expansion bombs) and external entities are refused, and every element
keeps the line its start tag is on, so errors can name it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import ParseError

from defusedxml import DefusedXmlException, EntitiesForbidden
from defusedxml.ElementTree import DefusedXMLParser


@dataclass
class Node:
    """An element, namespace stripped, with the line its start tag is on."""

    tag: str
    attrib: dict[str, str]
    line: int
    parts: list[str] = field(default_factory=list)
    children: list[Node] = field(default_factory=list)

    @property
    def text(self) -> str:
        # All direct text: `<EnableAutomaticServerSelection>true<Auto.../>` keeps "true"
        # before its children, and a hand-edited file may put it after them.
        return "".join(self.parts).strip()

    def all(self, tag: str) -> Iterator[Node]:
        return (child for child in self.children if child.tag == tag)


class _Builder:
    """ElementTree parser target building `Node`s, reading lines from the expat parser."""

    def __init__(self) -> None:
        self.expat: Any = None
        self.stack: list[Node] = []
        self.root: Node | None = None

    def start(self, tag: str, attrib: dict[str, str]) -> None:
        node = Node(_local(tag), {_local(k): v for k, v in attrib.items()},
                    self.expat.CurrentLineNumber)
        if self.stack:
            self.stack[-1].children.append(node)
        else:
            self.root = node
        self.stack.append(node)

    def end(self, tag: str) -> None:
        self.stack.pop()

    def data(self, data: str) -> None:
        if self.stack:
            self.stack[-1].parts.append(data)

    def close(self) -> Node | None:
        return self.root


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


class _Refused(Exception):
    """A construct refused while parsing; the message says which and why."""


def parse_xml(path: Path, data: bytes, error: type[ValueError], what: str) -> Node:
    """Parse with expat via defusedxml: no DTD, no entity declarations, no external entities.

    Problems raise `error`, naming `path`, the line and (in refusals) `what` the document
    is ("a profile")."""
    builder = _Builder()
    # defusedxml refuses entity declarations (expansion bombs, XXE) and external references;
    # any other DTD is refused once it ends, so there is nothing a profile can declare.
    parser = DefusedXMLParser(target=builder, forbid_dtd=False, forbid_entities=True,
                              forbid_external=True)
    expat = builder.expat = parser.parser
    doctype: list[str] = []

    def start_doctype(name: str, *_: object) -> None:
        doctype.append(name)

    def end_doctype() -> None:
        raise _Refused(f"<!DOCTYPE {doctype[-1]}>: refused: {what} must not contain a "
                       "document type declaration (DTD)")

    expat.StartDoctypeDeclHandler = start_doctype
    expat.EndDoctypeDeclHandler = end_doctype
    try:
        parser.feed(data)
        root: Node | None = parser.close()
    except ParseError as e:
        line, column = e.position
        problem = str(e).rpartition(": line ")[0] or str(e)
        raise error(f"{path}: line {line}, column {column}: XML syntax error: {problem}"
                           ) from None
    except _Refused as e:
        raise error(f"{path}: line {expat.CurrentLineNumber}: {e}") from None
    except EntitiesForbidden as e:
        kind = (f"external entity (XXE) {e.sysid!r}" if e.sysid
                else "entity declaration (entity expansion, e.g. billion laughs)")
        raise error(f"{path}: line {expat.CurrentLineNumber}: <!ENTITY {e.name}>: "
                    f"refused: {what} must not contain an {kind}") from None
    except DefusedXmlException as e:
        raise error(f"{path}: line {expat.CurrentLineNumber}: refused: "
                    f"{type(e).__name__}") from None
    if root is None:  # pragma: no cover - expat reports "no element found" first
        raise error(f"{path}: no root element")
    return root
