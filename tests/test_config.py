"""The profile file: starter file, named profiles, nodes, clear one-line errors."""
from __future__ import annotations

import pytest

from helpers import run_cli
from ihecli import config as cfg
from ihecli.errors import ConfigError, UsageError


def test_init_writes_a_commented_file_that_loads(tmp_path):
    r = run_cli("config", "init")
    assert r.code == 0
    p = tmp_path / "config.toml"
    text = p.read_text()
    assert text.count("#") > 10 and "[archive]" in text
    s = cfg.load()
    assert s.archive.aet == "IHE_ARCHIVE" and s.archive.port == 11112
    assert run_cli("config", "init").code == 2  # refuses to overwrite
    assert run_cli("config", "init", "--force").code == 0


def test_path_follows_flag_and_env(tmp_path):
    assert run_cli("config", "path").stdout.strip() == str(tmp_path / "config.toml")
    assert run_cli("--config", str(tmp_path / "x.toml"), "config", "path").stdout.strip() == str(tmp_path / "x.toml")


def test_profiles_overlay_and_nodes(tmp_path):
    (tmp_path / "config.toml").write_text('''
calling_aet = "MYSCU"
[archive]
aet = "MAIN"
port = 11112
db = "postgresql+psycopg://ihe:s3cret@db.example/ihe"
[nodes]
pacs = { aet = "PACS", host = "10.1.2.3", port = 104 }
viewer = "VIEW@127.0.0.1:11113"
[profiles.lab.archive]
port = 12000
[profiles.lab.nodes]
pacs = { aet = "LABPACS", host = "127.0.0.1", port = 4242 }
''')
    s = cfg.load()
    assert s.calling_aet == "MYSCU" and s.archive.port == 11112
    assert s.node("pacs").aet == "PACS" and s.node("viewer").port == 11113
    assert str(s.node("OTHER@host.example:4242")) == "OTHER@host.example:4242"
    lab = cfg.load(profile="lab")
    assert lab.archive.port == 12000 and lab.archive.aet == "MAIN" and lab.node("pacs").aet == "LABPACS"
    r = run_cli("--profile", "lab", "config", "show", "--json")
    assert r.code == 0
    d = r.json
    assert d["profile"] == "lab" and d["archive"]["port"] == 12000
    assert "s3cret" not in r.stdout and "***" in d["archive"]["db"]
    r = run_cli("config", "show")
    assert "s3cret" not in r.stdout
    # the table has every section the JSON has, the archive's repositoryUniqueId made explicit
    shown = {line.split()[0] for line in r.stdout.splitlines() if line.strip() and not line.startswith(" ")}
    assert {"tls.floor", "audit.repository", "time.server", "xds.registry", "pix.manager", "pdq.supplier",
            "nodes.pacs"} <= shown
    assert "(fixed for the AE title)" in " ".join(r.stdout.split())
    r = run_cli("--profile", "nope", "config", "show")
    assert r.code == 2 and "no profile named 'nope'" in r.stderr


@pytest.mark.parametrize("text,line,what", [
    ("[archive]\nport = 'abc'\n", 2, "port: must be an integer"),
    ("[archive]\naet = 'THIS_AE_TITLE_IS_TOO_LONG'\n", 2, "bad AE title"),
    ("[archive\nport = 1\n", 1, ""),
    ("\n\n[nodes]\npacs = 'nonsense'\n", 4, "pacs"),
    ("[archive]\nbogus = 1\n", 2, "unknown archive setting"),
    ("[nodes]\npacs = { aet = 'P', host = 'h' }\n", 2, "node needs port"),
    ("[nodes]\npacs = { aet = 'P', host = 'h', port = 104, tls = 'yes' }\n", 2, "tls: must be true or false"),
    ("[nodes]\npacs = { aet = 'P', host = 'h', port = 104, TLS = true }\n", 2, "unknown node setting 'TLS'"),
])
def test_bad_file_gets_one_line_naming_file_and_line(tmp_path, text, line, what):
    p = tmp_path / "config.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        cfg.load()
    msg = str(e.value)
    assert msg.startswith(f"{p}: line {line}:"), msg
    assert what in msg
    r = run_cli("config", "show")
    assert r.code == 2
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("ihe: error: ") and str(p) in lines[0]


def test_node_specs():
    assert cfg.resolve_node("A@h:1", {}) == cfg.Node("A", "h", 1)
    assert cfg.resolve_node("h:104", {}).aet == "ANY-SCP"
    assert cfg.resolve_node("A@[::1]:104", {}).host == "::1"
    for bad in ("A@h", "A@h:99999", "nohost", "A\\B@h:1", "tls://A@h", "tls://"):
        with pytest.raises(UsageError):
            cfg.resolve_node(bad, {})


def test_nodes_that_want_tls(tmp_path):
    """tls = true in a node's table, or tls:// before a node string: the string form parses back."""
    (tmp_path / "config.toml").write_text('''
[nodes.pacs]
aet = "PACS"
host = "10.1.2.3"
port = 2762
tls = true
[nodes]
viewer = "tls://VIEW@127.0.0.1:11113"
plain = { aet = "PLAIN", host = "h", port = 104, tls = false }
''')
    s = cfg.load()
    assert s.node("pacs").tls and s.node("viewer").tls and not s.node("plain").tls
    assert str(s.node("pacs")) == "tls://PACS@10.1.2.3:2762"
    assert cfg.resolve_node(str(s.node("pacs")), {}) == cfg.Node("PACS", "10.1.2.3", 2762, tls=True)
    assert cfg.resolve_node("TLS://A@h:1", {}).tls and not cfg.resolve_node("A@h:1", {}).tls
    assert s.node("tls://plain") == cfg.Node("PLAIN", "h", 104, name="plain", tls=True)  # a profile node, secured
    r = run_cli("config", "show", "--json")
    assert r.code == 0 and r.json["nodes"]["pacs"]["tls"] is True and r.json["nodes"]["plain"]["tls"] is False
    r = run_cli("config", "show")
    assert "tls://PACS@10.1.2.3:2762" in r.stdout and "tls://PLAIN" not in r.stdout
