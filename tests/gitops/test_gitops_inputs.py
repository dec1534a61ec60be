"""Hostile and malformed inputs: URLs, branches, prefixes, fleet.yaml content and resource specs."""

from __future__ import annotations

import pytest

from fleet_mcp.errors import InvalidArgument
from fleet_mcp.fleet.spec import canonical_attributes, check_name, fingerprint, is_secret_key
from fleet_mcp.gitops.fleetfile import MAX_BYTES, FleetFileError, parse_fleet_file
from fleet_mcp.gitops.urls import parse_bound_host, validate_branch, validate_path_prefix, validate_repo_url

# --- repository URLs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://github.com/acme/fleet.git",
        "https://git.example.com:8443/team/fleet",
        "ssh://git@github.com/acme/fleet.git",
        "ssh://git@git.example.com:2222/acme/fleet",
        "git@github.com:acme/fleet.git",
        "https://127.0.0.1:8443/x.git",
    ],
)
def test_remote_urls_accepted(url: str) -> None:
    assert validate_repo_url(url).url == url


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ext::sh -c touch% /tmp/pwned", "remote helpers"),
        ("ext::ssh", "remote helpers"),
        ("fd::3", "remote helpers"),
        ("transport::https://github.com/x", "remote helpers"),
        ("--upload-pack=touch /tmp/pwned", "command-line option"),
        ("-oProxyCommand=sh", "command-line option"),
        ("ssh://-oProxyCommand=sh/x", "command-line option"),
        ("git@host:-x", "command-line option"),
        ("https://github.com/-x/y", "command-line option"),
        ("https://user:pass@github.com/acme/fleet", "credentials"),
        ("https://ghp_token@github.com/acme/fleet", "credentials"),
        ("ssh://git:pw@github.com/acme/fleet", "credentials"),
        ("http://github.com/acme/fleet", "not allowed"),
        ("git://github.com/acme/fleet", "not allowed"),
        ("file:///tmp/fleet", "disabled"),
        ("/tmp/fleet", "disabled"),
        ("relative/path", "not a recognised"),
        ("https://github.com/acme/fleet\n", "whitespace"),
        ("https://github.com/a b", "whitespace"),
        ("https://github.com/../etc", "'..'"),
        ("https://github.com/acme/fleet?x=1", "query"),
        ("", "empty"),
    ],
)
def test_hostile_urls_refused(url: str, problem: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        validate_repo_url(url)
    assert problem in err.value.message
    assert err.value.hint
    # A refused URL is never echoed: it may hold a credential.
    assert "pass" not in err.value.message.replace("passwords", "")


def test_local_urls_only_when_allowed() -> None:
    assert validate_repo_url("file:///srv/fleet", allow_local=True).transport == "local"
    assert validate_repo_url("/srv/fleet", allow_local=True).transport == "local"
    with pytest.raises(InvalidArgument):
        validate_repo_url("file://otherhost/srv/fleet", allow_local=True)
    with pytest.raises(InvalidArgument):
        validate_repo_url("/srv/../etc", allow_local=True)


@pytest.mark.parametrize("prefix", ["/etc", "../x", "a/../../b", "..", "a//b", "./a", "-x", ".git", "a\\b", "a\x00"])
def test_bad_path_prefix_refused(prefix: str) -> None:
    with pytest.raises(InvalidArgument):
        validate_path_prefix(prefix)


def test_path_prefix_normalised() -> None:
    assert validate_path_prefix("") == ""
    assert validate_path_prefix("fleets/prod/") == "fleets/prod"


@pytest.mark.parametrize("branch", ["-f", "--upload-pack=x", "a..b", "HEAD", "a b", "x.lock", "@{-1}", "/x", "a//b"])
def test_bad_branch_refused(branch: str) -> None:
    with pytest.raises(InvalidArgument):
        validate_branch(branch)


# --- resource specs ---------------------------------------------------------------------------


def test_canonical_attributes_fill_defaults_and_sort_maps() -> None:
    a = canonical_attributes("module", {"variety": "role", "config": {"b": 1, "a": {"z": 1, "y": 2}}})
    assert a == {"variety": "role", "priority": 0, "version": None, "config": {"a": {"y": 2, "z": 1}, "b": 1}}
    assert list(a["config"]) == ["a", "b"]
    assert fingerprint(a) == fingerprint(canonical_attributes("module", {"config": {"a": {"y": 2, "z": 1}, "b": 1},
                                                                         "variety": "role", "priority": 0}))


@pytest.mark.parametrize(
    "settings",
    [
        {"password": "x"},
        {"nested": {"deeper": {"clientSecret": "x"}}},
        {"AWS_SECRET_ACCESS_KEY": "x"},
        {"api-key": "x"},
        {"Private_Key": "x"},
        {"list": [{"token": "x"}]},
        {"key": "-----BEGIN RSA PRIVATE KEY-----\nMII\n-----END RSA PRIVATE KEY-----"},
    ],
)
def test_secret_looking_settings_refused(settings: dict) -> None:
    with pytest.raises(InvalidArgument) as err:
        canonical_attributes("provider_config", {"provider": "aws", "settings": settings})
    assert "credential" in str(err.value)
    assert "MII" not in str(err.value)


def test_credential_references_are_fine() -> None:
    attrs = canonical_attributes("provider_config", {"provider": "aws", "settings": {"credential": "aws-prod",
                                                                                     "token_credential": "t1"}})
    assert attrs["settings"]["credential"] == "aws-prod"
    assert not is_secret_key("credential")


def test_names() -> None:
    assert check_name("assignment", "web:nginx") == "web:nginx"
    for kind, name in [("template", "a b"), ("template", "-x"), ("assignment", "web"), ("module", "a:b")]:
        with pytest.raises(InvalidArgument):
            check_name(kind, name)


# --- fleet.yaml -------------------------------------------------------------------------------


def _errors(data: bytes | str) -> list[str]:
    with pytest.raises(FleetFileError) as err:
        parse_fleet_file(data)
    return err.value.subject["errors"]


def test_alias_bomb_refused_before_expansion() -> None:
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 10):
        prev = chr(ord("a") + i - 1)
        cur = chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]")
    errors = _errors("\n".join(lines))
    assert "anchors and aliases are not allowed" in errors[0]


def test_alias_alone_refused() -> None:
    assert "aliases" in _errors("templates: {}\nmodules: *m\n")[0]


def test_two_mib_file_refused() -> None:
    data = b"templates:\n" + b"  # padding\n" * (2 * 1024 * 1024 // 12)
    assert len(data) > MAX_BYTES
    with pytest.raises(FleetFileError, match="limit is 1048576 bytes"):
        parse_fleet_file(data)


def test_duplicate_keys_are_errors() -> None:
    errors = _errors("templates:\n  web: {description: a}\n  web: {description: b}\n")
    assert errors == ["templates.web: duplicate key (line 3, first at line 2)"]


def test_every_error_reported_at_once_with_dotted_paths() -> None:
    data = """\
templates:
  web:
    description: 5
    colour: blue
modules:
  web: {variety: role, priority: high}
  odd: {variety: nonsense}
assignments:
  web:nginx: {enabled: 1}
provider_configs:
  aws: {provider: aws, settings: {password: hunter2}}
fleet: {default_template: nope}
bogus: true
"""
    errors = _errors(data)
    text = "\n".join(errors)
    for expected in [
        "templates.web.description: Input should be a valid string (line 3)",
        "templates.web.colour: Extra inputs are not permitted (line 4)",
        "modules.web.priority: Input should be a valid integer (line 6)",
        "modules.odd.variety: Input should be 'subscription', 'role', 'config' or 'instance' (line 7)",
        'assignments["web:nginx"].enabled: Input should be a valid boolean (line 9)',
        "provider_configs.aws.settings: key 'password' looks like a secret",
        "bogus: Extra inputs are not permitted",
        "module 'nginx' is not defined in this file",
        "fleet.default_template: template 'nope' is not defined in this file",
    ]:
        assert expected in text, expected
    assert len(errors) == 9
    assert "hunter2" not in text


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ("templates: {}\n---\nmodules: {}\n", "more than one YAML document"),
        ("x: !!python/object/apply:os.system ['true']\n", "is not allowed"),
        ("modules: {m: {variety: role, config: {x: .inf}}}\n", "non-finite"),
        ("modules: {m: {variety: role, config: " + "{a: " * 20 + "1" + "}" * 20 + "}}\n", "nesting deeper"),
        ("templates: [1, 2]\n", "valid dictionary"),
        ("- just a list\n", "must be a mapping"),
        ("templates: {web: {description: [unclosed}\n", "not valid YAML"),
        ("? [complex, key]\n: 1\n", "plain strings"),
        (b"\xff\xfe bad", "UTF-8"),
    ],
)
def test_malformed_documents(data: str | bytes, fragment: str) -> None:
    with pytest.raises(FleetFileError) as err:
        parse_fleet_file(data)
    assert fragment in str(err.value)


def test_plain_keys_are_text_and_dates_stay_strings() -> None:
    state = parse_fleet_file("templates:\n  yes: {metadata: {since: 2024-01-01, on: yes}}\n")
    assert state.resources["template"]["yes"]["metadata"] == {"on": True, "since": "2024-01-01"}


def test_empty_file_is_an_empty_desired_state() -> None:
    assert parse_fleet_file(b"").is_empty()
    assert parse_fleet_file(b"templates:\nmodules:\n").is_empty()


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://GitHub.com/acme/fleet.git", "github.com"),
        ("https://github.com:443/acme/fleet.git", "github.com"),
        ("https://git.example:8443/acme/fleet.git", "git.example:8443"),
        ("ssh://git@github.com/acme/fleet.git", "github.com"),
        ("ssh://git@github.com:22/acme/fleet.git", "github.com"),
        ("ssh://git@github.com:2222/acme/fleet.git", "github.com:2222"),
        ("git@github.com:acme/fleet.git", "github.com"),
        ("https://[::1]:8443/acme/fleet.git", "[::1]:8443"),
    ],
)
def test_repository_host_is_what_a_credential_is_bound_to(url: str, host: str) -> None:
    parsed = validate_repo_url(url)
    assert parsed.host == host
    # The same host written in a credential's metadata normalises to the same key.
    written = host if parsed.transport == "ssh" or host.endswith(":8443") else host.upper()
    assert parse_bound_host(written, parsed.transport) == host


@pytest.mark.parametrize("bad", ["", "https://github.com", "github.com/acme", "user@github.com", "git hub.com",
                                 "github.com:99999", "-oProxyCommand=x", 42])
def test_bad_credential_hosts_refused(bad: object) -> None:
    with pytest.raises(InvalidArgument, match="metadata.host"):
        parse_bound_host(bad, "https")
