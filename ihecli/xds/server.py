"""``ihe xds serve``: Document Registry and Document Repository on one HTTP port.

Responders: Registry Stored Query (ITI-18), Provide and Register Document Set-b (ITI-41),
Register Document Set-b (ITI-42), Retrieve Document Set (ITI-43), Delete Document Set (ITI-62).
Metadata lives in the archive database (tables_xds), documents under ``xds/`` in the archive's
storage folder. A document is written and fsynced before its metadata commits, and the
metadata and document rows commit together, so a Success means both are durable; a refused
submission leaves no file behind.

``XdsServer(archive, repository_unique_id=..., port=0).start()`` is the controller;
``xds_app(...)`` the Starlette app (POST to /xds, /xds/registry or /xds/repository: every
path answers every action).
"""
from __future__ import annotations

import logging
import uuid
from concurrent.futures import ThreadPoolExecutor

from lxml import etree
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from ihecli.archive.tables_xds import xds_documents
from ihecli.net.http import HttpServer
from ihecli.net.soap import Attachments, Reply, SoapFault, SoapMessage, SoapService
from ihecli.net.soap.schemas import SchemaError, validate
from ihecli.net.soap.xml import LCM, QUERY, RIM, XDSB, q
from ihecli.xds import audit
from ihecli.xds import vocabulary as v
from ihecli.xds.messages import (RegistryError, RetrievedDocument, XdsError, adhoc_query_response,
                                 adhoc_query_response_xml, read_retrieve_request, registry_response,
                                 retrieve_response)
from ihecli.xds.model import sha1_hex
from ihecli.xds.registry import Registry, _set_slot
from ihecli.xds.stored_query import Params, StoredQuery

log = logging.getLogger("ihe.xds")
DOC_DIR = "xds"


class XdsService:
    """The handlers of the registry and repository, over one archive."""

    def __init__(self, archive, *, repository_unique_id: str, home: str = ""):
        self.archive = archive
        self.blobs = archive.blobs
        self.repository_unique_id = repository_unique_id
        self.home = home
        # the transactions its audit events name: XCA's responding gateway answers ITI-38/39 here
        self.query_tx = self.retrieve_tx = None
        self.registry = Registry(archive.engine, archive.db_url)
        self._io = ThreadPoolExecutor(max_workers=8, thread_name_prefix="ihe-xds-file")

    def close(self) -> None:
        self._io.shutdown(wait=True)
        self.registry.close()

    def handlers(self) -> dict:
        return {v.ITI18: self.stored_query, v.ITI41: self.provide_and_register, v.ITI42: self.register,
                v.ITI43: self.retrieve, v.ITI62: self.delete}

    # -- ITI-18 ------------------------------------------------------------------------------------
    def stored_query(self, msg: SoapMessage) -> Reply:
        action = v.response_action(v.ITI18)
        try:
            _expect(msg, QUERY, "AdhocQueryRequest")
            try:
                validate(msg.body)
            except SchemaError as e:
                raise XdsError(RegistryError("XDSRegistryError", f"invalid AdhocQueryRequest: {e}"))
            opt = msg.body.find(q(QUERY, "ResponseOption"))
            rtype = opt.get("returnType", "LeafClass") if opt is not None else "LeafClass"
            aq = msg.body.find(q(RIM, "AdhocQuery"))
            params = Params(aq)
            with self.archive.engine.connect() as conn:
                objects = StoredQuery(conn).run(aq.get("id", ""), params, object_ref=rtype == "ObjectRef",
                                                home=self.home)
            self._audit_query(msg, aq, params, True)
            # the objects as kept at registration, joined as they are: no tree built per query
            return Reply(adhoc_query_response_xml(v.SUCCESS, objects), action)
        except XdsError as e:
            self._audit_query(msg, msg.body.find(q(RIM, "AdhocQuery")), None, False)
            return Reply(adhoc_query_response(v.FAILURE, [], e.errors), action)

    def _audit_query(self, msg, aq, params, ok: bool) -> None:
        if not audit.enabled():  # the peers and the serialized query are for the event only
            return
        pid = ""
        if params is not None:
            pid = next((x[0] for k, vals in params.values.items() if k.endswith(("PatientId", "patientId"))
                        for x in vals if x), "")
        audit.query(audit.remote_host(msg.peer), audit.local("ihe-xds-registry"),
                    aq.get("id", "") if aq is not None else "", etree.tostring(msg.body), pid, ok, self.query_tx)

    # -- ITI-42 ------------------------------------------------------------------------------------
    def register(self, msg: SoapMessage) -> Reply:
        action = v.response_action(v.ITI42)
        try:
            _expect(msg, LCM, "SubmitObjectsRequest")
            _valid(msg.body, "XDSRegistryMetadataError")
            sub = self.registry.normalize(msg.body)
            self.registry.register(sub)
        except XdsError as e:
            return Reply(registry_response(v.FAILURE, e.errors), action)
        return Reply(registry_response(v.SUCCESS), action)

    # -- ITI-41 ------------------------------------------------------------------------------------
    def provide_and_register(self, msg: SoapMessage) -> Reply:
        action = v.response_action(v.ITI41)
        written: list[str] = []
        sub = None
        try:
            _expect(msg, XDSB, "ProvideAndRegisterDocumentSetRequest")
            _valid(msg.body, "XDSRepositoryMetadataError")
            sor = msg.body.find(q(LCM, "SubmitObjectsRequest"))
            docs: dict[str, bytes] = {}
            for d in msg.body.findall(q(XDSB, "Document")):
                did = d.get("id", "")
                if did in docs:
                    raise XdsError(RegistryError("XDSRepositoryMetadataError", f"two Documents with id {did}"))
                try:
                    docs[did] = msg.binary(d)
                except SoapFault as e:
                    raise XdsError(RegistryError("XDSRepositoryError", f"Document {did}: {e.reason}")) from None
            entries = {el.get("id"): el for el in sor.iter(q(RIM, "ExtrinsicObject"))}
            errors = [RegistryError("XDSMissingDocument", f"DocumentEntry {i} has no Document", i)
                      for i in entries if i not in docs]
            errors += [RegistryError("XDSMissingDocumentMetadata", f"Document {i} has no DocumentEntry", i)
                       for i in docs if i not in entries]
            if errors:
                raise XdsError(errors)
            if not msg.mtom:
                raise XdsError(RegistryError("XDSRepositoryError", "ITI-41 must be sent as MTOM/XOP "
                                             "(multipart/related; ITI TF-2x V.3.6)"))
            rows = []
            for i, el in entries.items():
                data = docs[i]
                digest, size = sha1_hex(data), len(data)
                slots = {s.get("name"): [(x.text or "").strip() for x in s.iter(q(RIM, "Value"))]
                         for s in el.findall(q(RIM, "Slot"))}
                if slots.get("hash") and slots["hash"][0].lower() != digest:
                    errors.append(RegistryError("XDSNonIdenticalHash", f"DocumentEntry {i}: hash {slots['hash'][0]} "
                                                f"differs from the document's SHA-1 {digest}", i))
                if slots.get("size") and slots["size"][0] != str(size):
                    errors.append(RegistryError("XDSNonIdenticalSize", f"DocumentEntry {i}: size {slots['size'][0]} "
                                                f"differs from the document's {size} bytes", i))
                _set_slot(el, "repositoryUniqueId", self.repository_unique_id)
                _set_slot(el, "size", str(size))
                _set_slot(el, "hash", digest)
            if errors:
                raise XdsError(errors)
            sub = self.registry.normalize(sor, metadata_error="XDSRepositoryMetadataError")
            uids = [de.unique_id for de, _ in sub.docs]
            if len(set(uids)) != len(uids):
                raise XdsError(RegistryError("XDSRepositoryDuplicateUniqueIdInMessage", "a uniqueId is given twice"))
            by_uuid = {sub.id_map.get(i, i): data for i, data in docs.items()}
            # written and fsynced side by side: the disk's flushes overlap
            rels = [self._name() for _ in sub.docs]
            futures = [self._io.submit(self.blobs.write_new, rel, by_uuid[de.entry_uuid])
                       for rel, (de, _el) in zip(rels, sub.docs)]
            for f, rel in zip(futures, rels):
                try:
                    f.result()
                    written.append(rel)
                except OSError:
                    for g in futures:
                        g.exception()
                    written[:] = rels
                    raise
            for rel, (de, _el) in zip(rels, sub.docs):
                rows.append({"unique_id": de.unique_id, "repository_uid": self.repository_unique_id,
                             "mime_type": de.mime_type, "path": rel, "size": len(by_uuid[de.entry_uuid]),
                             "hash": sha1_hex(by_uuid[de.entry_uuid])})
            self.registry.register(sub, documents=rows, metadata_error="XDSRepositoryMetadataError")
        except XdsError as e:
            self._unwrite(written)
            self._audit_provide(msg, sub, False)
            return Reply(registry_response(v.FAILURE, e.errors), action)
        except OSError as e:
            self._unwrite(written)
            log.error("cannot write a document: %s", e)
            return Reply(registry_response(v.FAILURE, [RegistryError("XDSRepositoryOutOfResources",
                                                                     "cannot write the document")]), action)
        except BaseException:
            self._unwrite(written)
            raise
        self._audit_provide(msg, sub, True)
        return Reply(registry_response(v.SUCCESS), action)

    def _audit_provide(self, msg, sub, ok: bool) -> None:
        audit.provide(audit.remote_host(msg.peer), audit.local("ihe-xds-repository"),
                      sub.ss.unique_id if sub else "", sub.ss.patient_id if sub else "", ok, sender=False)

    @staticmethod
    def _name() -> str:
        name = uuid.uuid4().hex
        return f"{DOC_DIR}/{name[:2]}/{name}"

    def _unwrite(self, rels: list[str]) -> None:
        for rel in rels:
            try:
                self.blobs.remove(rel)
            except OSError:
                pass

    # -- ITI-43 ------------------------------------------------------------------------------------
    def retrieve(self, msg: SoapMessage) -> Reply:
        action = v.response_action(v.ITI43)
        parts = Attachments()
        try:
            _expect(msg, XDSB, "RetrieveDocumentSetRequest")
            _valid(msg.body, "XDSRepositoryError")
        except XdsError as e:
            return Reply(retrieve_response(v.FAILURE, e.errors, [], parts), action, parts)
        found, errors = [], []
        reqs = read_retrieve_request(msg.body)
        with self.archive.engine.connect() as conn:
            for r in reqs:
                if r.repository_unique_id != self.repository_unique_id:
                    errors.append(RegistryError("XDSUnknownRepositoryId", f"repository {r.repository_unique_id} is "
                                                f"not this one ({self.repository_unique_id})", r.document_unique_id))
                    continue
                row = conn.execute(select(xds_documents).where(xds_documents.c.unique_id == r.document_unique_id)).first()
                if row is None:
                    errors.append(RegistryError("XDSDocumentUniqueIdError", f"no document {r.document_unique_id}",
                                                r.document_unique_id))
                    continue
                try:
                    data = self.blobs.path(row.path).read_bytes()
                except OSError:
                    errors.append(RegistryError("XDSRepositoryError", f"document {r.document_unique_id} is "
                                                "unreadable", r.document_unique_id))
                    continue
                found.append(RetrievedDocument(self.repository_unique_id, row.unique_id, row.mime_type, data, r.home))
        status = v.SUCCESS if not errors else (v.PARTIAL if found else v.FAILURE)
        audit.retrieve(audit.local("ihe-xds-repository"), audit.remote_host(msg.peer),
                       [(d.document_unique_id, d.repository_unique_id, d.home) for d in found],
                       True if not errors else (None if found else False), is_consumer=False,
                       transaction=self.retrieve_tx)
        return Reply(retrieve_response(status, errors, found, parts), action, parts)

    # -- ITI-62 ------------------------------------------------------------------------------------
    def delete(self, msg: SoapMessage) -> Reply:
        action = v.response_action(v.ITI62)
        try:
            _expect(msg, LCM, "RemoveObjectsRequest")
            _valid(msg.body, "XDSRegistryError")
            ids = [r.get("id", "") for r in msg.body.iter(q(RIM, "ObjectRef"))]
            self.registry.remove(ids)
        except XdsError as e:
            audit.delete(audit.remote_host(msg.peer), audit.local("ihe-xds-registry"),
                         [r.get("id", "") for r in msg.body.iter(q(RIM, "ObjectRef"))], False)
            return Reply(registry_response(v.FAILURE, e.errors), action)
        audit.delete(audit.remote_host(msg.peer), audit.local("ihe-xds-registry"), ids, True)
        return Reply(registry_response(v.SUCCESS), action)


def _expect(msg: SoapMessage, ns: str, local: str) -> None:
    if msg.body.tag != q(ns, local):
        raise SoapFault(f"{msg.action} expects {local}, not {etree.QName(msg.body).localname}")


def _valid(el: etree._Element, code: str) -> None:
    try:
        validate(el)
    except SchemaError as e:
        raise XdsError(RegistryError(code, f"not schema-valid: {e}")) from None


def xds_app(service: XdsService, *, max_body: int = 256 * 1024 * 1024) -> Starlette:
    soap = SoapService(service.handlers(), max_body=max_body, name="XDS.b")

    async def index(request):
        return PlainTextResponse("ihe XDS.b Document Registry and Repository: POST SOAP 1.2 to /xds\n")

    return Starlette(routes=[Route("/", index)] + [Route(path, soap, methods=["GET", "POST"])
                                                   for path in ("/xds", "/xds/registry", "/xds/repository")])


class XdsServer:
    """Controller: ``start()`` binds and serves, ``stop()`` is idempotent; ``url`` is the endpoint."""

    def __init__(self, archive, *, repository_unique_id: str, bind: str = "127.0.0.1", port: int = 0,
                 max_body: int = 256 * 1024 * 1024, home: str = "", ssl_context=None):
        self.service = XdsService(archive, repository_unique_id=repository_unique_id, home=home)
        self.http = HttpServer(xds_app(self.service, max_body=max_body), bind=bind, port=port,
                               ssl_context=ssl_context, name="xds")

    @property
    def port(self) -> int:
        return self.http.port

    @property
    def url(self) -> str:
        return f"{self.http.url}/xds"

    def start(self) -> int:
        return self.http.start()

    def stop(self) -> None:
        self.http.stop()
        self.service.close()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
