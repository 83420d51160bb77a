"""`ihe xcai`: XCA-I Initiating and Responding Imaging Gateways (RAD-69 <-> RAD-75)."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from ihecli.cli.options import Bind, Ca, Cert, NoTls, OptionalTimeout, Port, Tls, TlsFloor, TlsKey, tls_config
from ihecli.cli.xca_cmd import Community, _communities, _serve
from ihecli.cli.xds_cmd import Home, _xds
from ihecli.errors import UsageError

app = typer.Typer(help="XCA-I: imaging gateways between communities (RAD-69 in, RAD-75 out, and back).\n\n"
                       "Example: ihe xcai gateway --community urn:oid:1.2.3=http://gw-b:8031/xcai --port 8030",
                  no_args_is_help=True)


def _sources(given: list[str]) -> dict[str, str]:
    out = {}
    for item in given:
        uid, sep, url = item.partition("=")
        if not sep or not uid[:1].isdigit() or not url.startswith(("http://", "https://")):
            raise UsageError(f"bad --imaging-source {item!r}: give REPOSITORY_UID=http://host:port/xdsi")
        out[uid] = url
    return out


def _run(ctx, gateway, *, path: str, name: str, port: Optional[int], default_port: int, bind: Optional[str],
         tls: dict) -> None:
    from ihecli.net import tls as tlsmod
    from ihecli.xdsi.xcai import GatewayServer

    ssl_context = tlsmod.context(tls_config(ctx, **tls), server=True)
    srv = GatewayServer(gateway, path=path, bind=bind or _xds(ctx).bind, port=default_port if port is None else port,
                        ssl_context=ssl_context, name=name)
    _serve(srv, name + " on {url} (Ctrl-C stops)", port)


@app.command("gateway")
def gateway_cmd(ctx: typer.Context, community: Community = None, port: Port = None, bind: Bind = None,
                timeout: OptionalTimeout = None, tls: Tls = False, no_tls: NoTls = False, cert: Cert = None,
                tls_key: TlsKey = None, ca: Ca = None, tls_floor: TlsFloor = None) -> None:
    """Initiating Imaging Gateway: take Retrieve Imaging Document Set (RAD-69) at /xcai from this
    community's consumers and fetch each image from its community (RAD-75), in parallel.

    Example: ihe xcai gateway --community urn:oid:1.3.6.1.4.1.21367.13.70.102=http://gw-b:8031/xcai --port 8030
    """
    from ihecli.xdsi.xcai import InitiatingImagingGateway

    gw = InitiatingImagingGateway(_communities(ctx, community), timeout=timeout or _xds(ctx).timeout)
    _run(ctx, gw, path="/xcai", name="XCA-I Initiating Imaging Gateway", port=port, default_port=8030, bind=bind,
         tls=dict(tls=tls, no_tls=no_tls, cert=cert, key=tls_key, ca=ca, floor=tls_floor))


@app.command("serve")
def serve_cmd(
    ctx: typer.Context,
    imaging_source: Annotated[list[str], typer.Option(
        "--imaging-source", metavar="UID=URL",
        help="An Imaging Document Source of this community: repositoryUniqueId=its RAD-69 endpoint (repeatable).")],
    home: Home = None,
    port: Port = None, bind: Bind = None, timeout: OptionalTimeout = None, tls: Tls = False, no_tls: NoTls = False,
    cert: Cert = None, tls_key: TlsKey = None, ca: Ca = None, tls_floor: TlsFloor = None,
) -> None:
    """Responding Imaging Gateway: answer Cross Gateway Retrieve Imaging Document Set (RAD-75) at
    /xcai from this community's Imaging Document Sources (RAD-69).

    Example: ihe xcai serve --home urn:oid:1.3.6.1.4.1.21367.13.70.102 --imaging-source 1.2.3.4=http://pacs:8080/xdsi
    """
    from ihecli.xdsi.xcai import RespondingImagingGateway

    home = home or _xds(ctx).home
    if not home or not home.startswith("urn:oid:"):
        raise UsageError("give this community's homeCommunityId: --home urn:oid:OID (or set xds.home)")
    gw = RespondingImagingGateway(home, _sources(imaging_source), timeout=timeout or _xds(ctx).timeout)
    _run(ctx, gw, path="/xcai", name="XCA-I Responding Imaging Gateway", port=port, default_port=8031, bind=bind,
         tls=dict(tls=tls, no_tls=no_tls, cert=cert, key=tls_key, ca=ca, floor=tls_floor))
