"""`ihe pdq`: PDQ Consumer for HL7 V3: find patients by demographics at a PDQ Supplier (ITI-47)."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from ihecli.cli import output
from ihecli.cli.options import Ca, Cert, Json, Limit, NoTls, Timeout, Tls, TlsFloor, TlsKey, state, tls_config
from ihecli.errors import IheError, UsageError

app = typer.Typer(help="PDQ Consumer (HL7 V3): find patients by demographics (ITI-47).\n\n"
                       "Example: ihe pdq query --family Jones --given Jimmy --birth-date 1963-08-04",
                  no_args_is_help=True)


def _address(parts: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for p in parts:
        k, sep, v = p.partition("=")
        if not sep:
            k, v = "street", p
        k = k.strip().lower()
        if not v.strip():
            raise UsageError(f"bad --address {p!r}: give PART=VALUE (street, city, state, postal, country)")
        out[k] = v.strip()
    return out


@app.command("query")
def query_cmd(
    ctx: typer.Context,
    family: Annotated[Optional[str], typer.Option("--family", metavar="NAME", help="Family name.")] = None,
    given: Annotated[Optional[str], typer.Option("--given", metavar="NAME", help="Given name.")] = None,
    birth_date: Annotated[Optional[str], typer.Option("--birth-date", metavar="YYYYMMDD",
                                                      help="Patient birth date.")] = None,
    gender: Annotated[Optional[str], typer.Option("--gender", metavar="M|F|U", help="Administrative gender.")] = None,
    patient_id: Annotated[Optional[str], typer.Option("--id", metavar="ID",
                                                      help="A patient identifier (with --domain).")] = None,
    domain: Annotated[Optional[str], typer.Option(
        "--domain", metavar="DOMAIN",
        help="Assigning authority of the patient ID: NAMESPACE, OID or NAMESPACE&OID&ISO (default: the profile's).")
    ] = None,
    address: Annotated[Optional[list[str]], typer.Option(
        "--address", metavar="PART=VALUE",
        help="Address part: street=, city=, state=, postal=, country= (a value alone: the street). Repeatable.")
    ] = None,
    target_domain: Annotated[Optional[list[str]], typer.Option(
        "--target-domain", metavar="DOMAIN",
        help="Only identifiers of this domain (NAMESPACE, OID or NS&OID&ISO; repeatable; default: all).")] = None,
    limit: Limit = None,
    all_pages: Annotated[bool, typer.Option(
        "--all", help="Fetch every match, page after page (query continuation), not only the first page.")] = False,
    supplier: Annotated[Optional[str], typer.Option(
        "--supplier", metavar="URL",
        help="The PDQ Supplier's SOAP endpoint (default: the profile's pdq.supplier; --to is the same).")
    ] = None,
    timeout: Timeout = 30,
    tls: Tls = False, no_tls: NoTls = False, cert: Cert = None, tls_key: TlsKey = None, ca: Ca = None,
    tls_floor: TlsFloor = None,
    json: Json = False,
    to_alias: Annotated[Optional[str], typer.Option("--to", hidden=True)] = None,
) -> None:
    """Find patients by demographics at a PDQ Supplier (ITI-47, PRPA_IN201305UV02 over SOAP 1.2)
    and print the matches with their identifiers.

    Exit status 1 when nothing matches (NF) or the supplier answers with an error (AE, shown),
    4 when it cannot be reached.

    Example: ihe pdq query --family Jones --gender M --supplier http://pdq.example.org:8080/pdq
    """
    from ihecli.pdq import PdqQuery, query_demographics
    from ihecli.pix import Domain

    st = state(ctx).settings()
    p = st.pdq
    dom = domain or p.domain
    id_domain = ""
    if dom:
        d = Domain.parse(dom)
        if not d.oid and patient_id:
            raise UsageError(f"--domain {dom!r}: HL7 V3 names an assigning authority by its OID "
                             "(give OID or NS&OID&ISO)")
        id_domain = d.oid
    targets = []
    for t in target_domain or []:
        d = Domain.parse(t)
        if not d.oid:
            raise UsageError(f"--target-domain {t!r}: HL7 V3 names an assigning authority by its OID")
        targets.append(d.oid)
    q = PdqQuery(family=family or "", given=given or "", birth_date=birth_date or "", gender=gender or "",
                 id=patient_id or "", id_domain=id_domain if patient_id else "", address=_address(address or []),
                 target_domains=targets, limit=limit)
    q.check()
    url = supplier or to_alias or p.supplier
    given = [name for name, v in (("--tls", tls), ("--cert", cert), ("--tls-key", tls_key), ("--ca", ca),
                                  ("--tls-floor", tls_floor)) if v]
    if given and url.startswith("http://"):  # else the query would go in the clear, the user believing otherwise
        raise UsageError(f"{', '.join(given)} given, but {url} is no TLS link: use https://")
    cfg = tls_config(ctx, tls=tls, no_tls=no_tls, cert=cert, key=tls_key, ca=ca, floor=tls_floor) \
        if url.startswith("https://") or tls or cert or ca else None
    ans = query_demographics(url, q, sender=p.sender, receiver=p.receiver,
                             timeout=timeout if timeout != 30 else p.timeout, tls_config=cfg, all_pages=all_pages)
    if ans.ack in ("AE", "AR") or ans.status in ("AE", "QE"):
        why = "; ".join(ans.errors) or "no reason given"
        raise IheError(f"the PDQ Supplier refused the query ({ans.ack or '-'}/{ans.status or '-'}): {why}")
    if not ans.patients:
        raise IheError(f"no patient matches (status {ans.status or 'NF'})")
    if json:
        output.print_json(ans.as_dict())
        return
    rows = [{"ids": ", ".join(str(i) for i in pt.ids), "name": "; ".join(pt.names), "birth": pt.birth_date,
             "gender": pt.gender, "address": "; ".join(pt.addresses),
             "other": ", ".join(str(i) for i in pt.other_ids), "score": pt.score} for pt in ans.patients]
    output.table(rows, ["ids", "name", "birth", "gender", "address", "other", "score"],
                 headers={"ids": "ID", "name": "Name", "birth": "Birth date", "gender": "Gender",
                          "address": "Address", "other": "Other IDs", "score": "Match"})
    more = f", {ans.remaining} more at the supplier (--all fetches them)" if ans.remaining else ""
    output.info(f"{len(ans.patients)} patient(s){more} ({ans.ms:g} ms)")
