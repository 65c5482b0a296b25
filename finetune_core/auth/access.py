"""Who may do what: access settings, users, permission checks and guarded actions.

Four sign-in modes, chosen by the server's configuration:

- ``oidc``: an ``[auth]`` section in ``.streamlit/secrets.toml`` (Streamlit's ``st.login``);
  the identity is the provider's e-mail address; admins from ``FINETUNE_ADMINS``.
- ``proxy``: ``FINETUNE_TRUSTED_HEADER`` (e.g. ``X-Forwarded-Email``) names a header an
  authenticating reverse proxy sets, believed only from ``FINETUNE_TRUSTED_PROXIES``
  (see ``auth.proxy``); admins from ``FINETUNE_ADMINS``.
- ``password``: per-user accounts in the workspace (``auth.accounts``): a name and that
  account's own password; admin rights come from the account. The old shared password
  (``FINETUNE_PASSWORD`` / ``password_sha256``) no longer signs anybody in: it only lets
  the first admin account be created from the browser while the workspace has none.
- ``open``: none of these and no account. No access control: everybody counts as an
  admin. For localhost or a trusted network only.

Everything here is pure Python (no Streamlit); ``ui/auth.py`` puts a face on it.
"""

from __future__ import annotations

import hashlib
import hmac
import ntpath
import os
import posixpath
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

from finetune_core.auth import audit
from finetune_core.auth.proxy import Network, ProxyConfigError, parse_proxies
from finetune_core.runs import RunPaths
from finetune_core.store import DatasetRecord, RunRecord, StoreError, Workspace

AuthMode = Literal["oidc", "proxy", "password", "open"]
T = TypeVar("T")
ANONYMOUS = "anonymous"

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")


class PermissionDenied(Exception):
    """The signed-in user may not do this; the message says who may."""


class AccessConfigError(ValueError):
    """The access settings are invalid; the message says which one and how to fix it."""


@dataclass(frozen=True)
class AccessSettings:
    """Server-wide access settings (see :func:`load_access_settings`)."""

    admins: frozenset[str] = frozenset()
    allow_server_paths: bool = False
    allow_custom_backbones: bool = False
    # Folders an admin's server-path import (and weights path) must lie in; () = anywhere
    # the server can read. Outside them a path is "not found or not allowed", like a
    # missing one.
    server_path_roots: tuple[str, ...] = ()
    auth_mode: AuthMode = "open"
    trusted_header: str = ""
    trusted_proxies: tuple[Network, ...] = ()
    # Secrets stay out of repr() so they never end up in a log or an error page.
    password: str = field(default="", repr=False)
    password_sha256: str = field(default="", repr=False)

    def is_admin(self, name: str) -> bool:
        """Whether a *verified* identity (OIDC, proxy) is listed in ``admins``; password
        mode takes admin rights from the account instead."""
        return bool(name.strip()) and identity_key(name) in self.admins


@dataclass(frozen=True)
class User:
    """The person using the app. ``name`` is what runs and datasets record as creator."""

    name: str
    is_admin: bool = False


# ----------------------------------------------------------------------------- settings
def load_access_settings(
    secrets: Mapping[str, Any] | None, environ: Mapping[str, str] | None = None
) -> AccessSettings:
    """Read the access settings; an environment variable wins over ``secrets.toml``.

    Environment: ``FINETUNE_ADMINS`` ("a@x.com,b@y.com"), ``FINETUNE_ALLOW_SERVER_PATHS``,
    ``FINETUNE_SERVER_PATH_ROOTS`` ("/data,/mnt/sets"),
    ``FINETUNE_ALLOW_CUSTOM_BACKBONES`` (1/0), ``FINETUNE_PASSWORD``,
    ``FINETUNE_PASSWORD_SHA256``, ``FINETUNE_TRUSTED_HEADER``, ``FINETUNE_TRUSTED_PROXIES``.
    Secrets: an ``[auth]`` section turns on OIDC; an
    ``[access]`` section may hold ``admins = [...]``, ``allow_server_paths``,
    ``allow_custom_backbones``, ``password``, ``password_sha256``, ``trusted_header`` and
    ``trusted_proxies``. Raises
    AccessConfigError for a value that cannot be understood (the app then refuses to
    open rather than run with less protection than intended).
    """
    secrets = secrets or {}
    environ = os.environ if environ is None else environ
    access = secrets.get("access") or {}
    if not isinstance(access, Mapping):
        raise AccessConfigError("secrets.toml: [access] must be a table (an [access] section).")

    def value(env_names: tuple[str, ...], key: str) -> tuple[Any, str]:
        return _lookup(env_names, key, environ, access, secrets)

    admins = _parse_admins(*value(("FINETUNE_ADMINS",), "admins"))
    server_paths = _parse_flag(*value(("FINETUNE_ALLOW_SERVER_PATHS",), "allow_server_paths"))
    roots = _parse_roots(*value(("FINETUNE_SERVER_PATH_ROOTS",), "server_path_roots"))
    backbones = _parse_flag(
        *value(
            # The singular spelling is what the first release read; keep honouring it.
            ("FINETUNE_ALLOW_CUSTOM_BACKBONES", "FINETUNE_ALLOW_CUSTOM_BACKBONE"),
            "allow_custom_backbones",
        )
    )
    password = str(value(("FINETUNE_PASSWORD",), "password")[0] or "")
    digest, where = value(("FINETUNE_PASSWORD_SHA256",), "password_sha256")
    # Accept a pasted `sha256sum` line ("<hex>  -") as well as the bare hex digest.
    digest = (str(digest or "").split() or [""])[0]
    if digest and not _SHA256_HEX.fullmatch(digest):
        raise AccessConfigError(
            f"{where} must be 64 hexadecimal characters (the sha256 of the password), e.g. "
            "the output of: printf %s 'the password' | sha256sum"
        )
    auth = secrets.get("auth")
    if auth is not None and not isinstance(auth, Mapping):
        raise AccessConfigError("secrets.toml: [auth] must be a table (an [auth] section).")
    header, proxies = _proxy_settings(value)
    if auth:
        mode: AuthMode = "oidc"
    elif header:
        mode = "proxy"
    elif password or digest:
        mode = "password"
    else:
        mode = "open"
    return AccessSettings(
        admins=admins,
        allow_server_paths=server_paths,
        allow_custom_backbones=backbones,
        server_path_roots=roots,
        auth_mode=mode,
        trusted_header=header,
        trusted_proxies=proxies,
        password=password,
        password_sha256=digest.lower(),
    )


def _proxy_settings(value: Callable[[tuple[str, ...], str], tuple[Any, str]]) -> tuple[str, Any]:
    """The trusted header's name and the proxies it is believed from."""
    header = str(value(("FINETUNE_TRUSTED_HEADER",), "trusted_header")[0] or "").strip()
    raw_proxies, proxies_where = value(("FINETUNE_TRUSTED_PROXIES",), "trusted_proxies")
    try:
        proxies = parse_proxies(raw_proxies or "", proxies_where)
    except ProxyConfigError as exc:
        raise AccessConfigError(str(exc)) from exc
    if header and not re.fullmatch(r"[A-Za-z0-9-]{1,100}", header):
        raise AccessConfigError(
            f"FINETUNE_TRUSTED_HEADER {header!r} is not a header name (e.g. X-Forwarded-Email)."
        )
    if header and not proxies:
        raise AccessConfigError(
            "FINETUNE_TRUSTED_HEADER is set but FINETUNE_TRUSTED_PROXIES is not: list the "
            "proxy's address (e.g. FINETUNE_TRUSTED_PROXIES=127.0.0.1), since anybody else "
            "could send that header too."
        )
    return header, proxies


def _lookup(
    env_names: tuple[str, ...],
    key: str,
    environ: Mapping[str, str],
    access: Mapping[str, Any],
    secrets: Mapping[str, Any],
) -> tuple[Any, str]:
    """A setting's raw value and where it came from ("" when unset), first found of: the
    environment variables, ``[access] key`` in secrets.toml, the variables' names at the
    top of secrets.toml."""
    for name in env_names:
        # An empty variable counts as unset: `FINETUNE_PASSWORD= streamlit run ...` must
        # not quietly drop the password from secrets.toml and open the app.
        if environ.get(name, "").strip():
            return environ[name], f"environment variable {name}"
    if key in access:
        return access[key], f"secrets.toml [access] {key}"
    for name in env_names:  # older deployments put FINETUNE_* at the top of secrets.toml
        if name in secrets:
            return secrets[name], f"secrets.toml {name}"
    return None, ""


def _parse_flag(raw: Any, where: str) -> bool:
    if raw is None or isinstance(raw, bool):
        return bool(raw)
    text = str(raw).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise AccessConfigError(f"{where} is {raw!r}; use 1 or 0 (true or false).")


def _parse_roots(raw: Any, where: str) -> tuple[str, ...]:
    """Absolute folders ("/data,/mnt/sets" or a list), resolved; AccessConfigError else."""
    if raw is None:
        return ()
    if isinstance(raw, str):
        items: Iterable[Any] = raw.replace(os.pathsep, ",").split(",")
    elif isinstance(raw, Iterable) and not isinstance(raw, Mapping):
        items = raw
    else:
        raise AccessConfigError(f'{where} must be a list of folders, e.g. ["/data"].')
    roots = []
    for item in (str(i).strip() for i in items):
        if not item:
            continue
        if not os.path.isabs(os.path.expanduser(item)):
            raise AccessConfigError(f"{where}: {item!r} is not an absolute folder (e.g. /data).")
        roots.append(os.path.realpath(os.path.expanduser(item)))
    return tuple(roots)


def _parse_admins(raw: Any, where: str) -> frozenset[str]:
    if raw is None:
        return frozenset()
    if isinstance(raw, str):
        items: Iterable[Any] = raw.split(",")
    elif isinstance(raw, Iterable) and not isinstance(raw, Mapping):
        items = raw
    else:
        raise AccessConfigError(
            f'{where} must be a list of names or e-mail addresses, e.g. admins = ["a@x.com"].'
        )
    return frozenset(identity_key(str(item)) for item in items if str(item).strip())


def with_accounts(settings: AccessSettings, has_accounts: bool) -> AccessSettings:
    """Once the workspace has accounts, an otherwise open server asks for sign-in."""
    if settings.auth_mode == "open" and has_accounts:
        return replace(settings, auth_mode="password")
    return settings


def check_password(settings: AccessSettings, typed: str) -> bool:
    """True if ``typed`` is the shared setup password (constant-time comparison); it only
    unlocks creating the first admin account, never a sign-in."""
    given = typed.encode("utf-8")
    ok = False
    if settings.password:
        ok |= hmac.compare_digest(given, settings.password.encode("utf-8"))
    if settings.password_sha256:
        digest = hashlib.sha256(given).hexdigest().encode()
        ok |= hmac.compare_digest(digest, settings.password_sha256.encode())
    return ok


def make_user(settings: AccessSettings, name: str) -> User:
    """The user ``name`` under ``settings``: open mode makes everybody an admin; OIDC and
    proxy identities are admins when listed in ``admins``. Password mode never uses this
    for a typed name (its users come from ``accounts.authenticate``)."""
    name = " ".join(name.split())
    if settings.auth_mode == "open":
        return User(name=name or ANONYMOUS, is_admin=True)
    if settings.auth_mode == "password":
        return User(name=name)
    return User(name=name, is_admin=settings.is_admin(name))


# ----------------------------------------------------------------------------- permissions
def can_view(user: User, record: RunRecord | DatasetRecord) -> bool:
    """Everything in a workspace is visible to the whole team (reports are shared by link)."""
    return True


def can_start(user: User) -> bool:
    """Anyone signed in may upload data and start runs."""
    return bool(user.name.strip())


def can_modify(user: User, record: RunRecord | DatasetRecord) -> bool:
    """Stop, delete, rename, resume: the record's creator or an admin.

    A record without a creator (made by the CLI or before sign-in existed) counts as
    made by "anonymous", so in open mode it stays manageable; elsewhere only admins may.
    """
    if not user.name.strip():
        return False
    if user.is_admin:
        return True
    return identity_key(record.creator or ANONYMOUS) == identity_key(user.name)


def require(permission_ok: bool, action: str, record: RunRecord | DatasetRecord) -> None:
    """Raise PermissionDenied ("Only alice or an admin can stop this run.") unless allowed."""
    if permission_ok:
        return
    kind = "run" if isinstance(record, RunRecord) else "dataset"
    creator = " ".join(record.creator.split())
    if creator and identity_key(creator) != ANONYMOUS:
        raise PermissionDenied(f"Only {creator} or an admin can {action} this {kind}.")
    raise PermissionDenied(f"Only an admin can {action} this {kind} (it has no recorded creator).")


def check_server_path_allowed(settings: AccessSettings) -> None:
    """Reading data from a folder on the server must be switched on by an admin."""
    if not settings.allow_server_paths:
        raise PermissionDenied(
            "Importing from a path on the server is off. An admin can turn it on with "
            "FINETUNE_ALLOW_SERVER_PATHS=1 in the environment or allow_server_paths = true "
            "under [access] in .streamlit/secrets.toml, then restart the app."
        )


def check_custom_backbone_allowed(settings: AccessSettings) -> None:
    """Custom ``.pt2`` backbones are whole model programs, so an admin must switch them on."""
    if not settings.allow_custom_backbones:
        raise PermissionDenied(
            "Custom backbone files are off (they carry a whole model program, not just weights, "
            "so only trusted files belong on a shared server). An admin can turn them on with "
            "FINETUNE_ALLOW_CUSTOM_BACKBONES=1 in the environment or allow_custom_backbones = "
            "true under [access] in .streamlit/secrets.toml, then restart the app."
        )


# ----------------------------------------------------------------------------- guarded actions
def _run(workspace: Workspace, run_id: str) -> RunRecord:
    run = workspace.get_run(run_id)
    if run is None:
        raise StoreError(f"No run with id {run_id!r}; it may have been deleted.")
    return run


def _dataset(workspace: Workspace, dataset_id: str) -> DatasetRecord:
    dataset = workspace.get_dataset(dataset_id)
    if dataset is None:
        raise StoreError(f"No dataset with id {dataset_id!r}; it may have been deleted.")
    return dataset


def guarded_stop(manager: Any, workspace: Workspace, user: User, run_id: str) -> bool:
    """``JobManager.stop`` for the run's creator or an admin; returns what stop returns."""
    run = _run(workspace, run_id)
    require(can_modify(user, run), "stop", run)
    stopped = bool(manager.stop(run_id))
    audit.record(workspace, user.name, "stop", "run", run_id, "" if stopped else "not active")
    return stopped


def guarded_resume(manager: Any, workspace: Workspace, user: User, run_id: str) -> None:
    """``JobManager.resume`` for the run's creator or an admin."""
    run = _run(workspace, run_id)
    require(can_modify(user, run), "resume", run)
    manager.resume(run_id)
    audit.record(workspace, user.name, "resume", "run", run_id)


def guarded_delete_run(workspace: Workspace, user: User, run_id: str) -> None:
    """``Workspace.delete_run`` for the run's creator or an admin."""
    run = _run(workspace, run_id)
    require(can_modify(user, run), "delete", run)
    workspace.delete_run(run_id)
    audit.record(workspace, user.name, "delete", "run", run_id, run.name)


def guarded_rename_run(workspace: Workspace, user: User, run_id: str, name: str) -> None:
    """``Workspace.rename_run`` for the run's creator or an admin."""
    run = _run(workspace, run_id)
    require(can_modify(user, run), "rename", run)
    workspace.rename_run(run_id, name)
    audit.record(workspace, user.name, "rename", "run", run_id, f"{run.name} -> {name.strip()}")


def guarded_delete_dataset(workspace: Workspace, user: User, dataset_id: str) -> None:
    """``Workspace.delete_dataset`` for the dataset's creator or an admin."""
    dataset = _dataset(workspace, dataset_id)
    require(can_modify(user, dataset), "delete", dataset)
    workspace.delete_dataset(dataset_id)
    audit.record(workspace, user.name, "delete", "dataset", dataset_id, dataset.name)


def guarded_rename_dataset(workspace: Workspace, user: User, dataset_id: str, name: str) -> None:
    """``Workspace.rename_dataset`` for the dataset's creator or an admin."""
    dataset = _dataset(workspace, dataset_id)
    require(can_modify(user, dataset), "rename", dataset)
    workspace.rename_dataset(dataset_id, name)
    audit.record(workspace, user.name, "rename", "dataset", dataset_id,
                 f"{dataset.name} -> {name.strip()}")  # fmt: skip


def guarded_evaluate(workspace: Workspace, user: User, run_id: str, evaluate: Callable[[], T]) -> T:
    """Run ``evaluate()`` for this run: anyone signed in may evaluate a run that has no
    evaluation yet; replacing an existing one is for its creator or an admin. Recorded
    (a failure too, then re-raised)."""
    run = _run(workspace, run_id)
    again = RunPaths(workspace.run_dir(run_id)).evaluation.exists()
    if again:
        require(can_modify(user, run), "re-evaluate", run)
    action = "re-evaluate" if again else "evaluate"
    return _recorded(workspace, user, action, run_id, "", evaluate)


def guarded_export(
    workspace: Workspace, user: User, run_id: str, fmt: str, export: Callable[[], T]
) -> T:
    """Run ``export()`` (format ``fmt``): a first export of a format is for anyone signed
    in; overwriting an existing one is for the run's creator or an admin. Recorded."""
    run = _run(workspace, run_id)
    if not can_start(user):
        raise PermissionDenied("Sign in to export a model.")
    again = RunPaths(workspace.run_dir(run_id)).export_zip(fmt).exists()
    if again:
        require(can_modify(user, run), f"replace the {fmt} export of", run)
    return _recorded(workspace, user, "export", run_id, fmt + (" (replaced)" if again else ""),
                     export)  # fmt: skip


def _recorded(
    workspace: Workspace, user: User, action: str, run_id: str, detail: str, do: Callable[[], T]
) -> T:
    if not can_start(user):
        raise PermissionDenied(f"Sign in to {action} a run.")
    try:
        result = do()
    except BaseException as exc:
        audit.record(workspace, user.name, action, "run", run_id,
                     f"{detail} failed: {type(exc).__name__}".strip())  # fmt: skip
        raise
    audit.record(workspace, user.name, action, "run", run_id, detail)
    return result


# ----------------------------------------------------------------------------- error text
# An absolute path: POSIX (/x/y, ~/x; not glued to a word, a relative path or a URL's
# "//") or Windows (C:\x, \\server\share). Unquoted, it ends at whitespace, a quote
# or a bracket; quoted (as in Python's error messages), it runs to the closing quote.
_PATH_CHAR = r"[^\s'\"`()\[\]{}<>,;|]"
_PATH_START = r"(?:~?/(?!/)|[A-Za-z]:\\|\\\\)"
_QUOTED_PATH = re.compile(rf"(['\"])({_PATH_START}[^'\"\n]*)\1")
_ABS_PATH = re.compile(rf"(?<![\w.~/\\]){_PATH_START}{_PATH_CHAR}+")


def public_error(message: str, user: User, roots: Iterable[str | Path] = ()) -> str:
    """``message`` for ``user``: admins see it as is; others see file names, not server paths.

    ``roots`` are folders to hide even when their own path contains spaces (the workspace).
    """
    if user.is_admin:
        return message
    for root in sorted({str(r).rstrip("/\\") for r in roots}, key=len, reverse=True):
        if len(root) > 1:
            pattern = rf"{re.escape(root)}(?:[/\\]{_PATH_CHAR}*)*"
            message = re.sub(pattern, lambda m: _name_of(m.group(0)), message)
    message = _QUOTED_PATH.sub(lambda m: m.group(1) + _name_of(m.group(2)) + m.group(1), message)
    return _ABS_PATH.sub(lambda m: _name_of(m.group(0)), message)


def _name_of(path: str) -> str:
    trail = ""
    while path and path[-1] in ".:":  # sentence punctuation after a path
        trail = path[-1] + trail
        path = path[:-1]
    module = ntpath if ("\\" in path and "/" not in path) else posixpath
    name = module.basename(path.rstrip("/\\"))
    if not name or name == "~":
        name = "…"
    return name + trail


def identity_key(name: str) -> str:
    """What two names must share to be one person: NFKC, blanks collapsed, case folded
    ("  ANN  " is "ann"; a full-width "ａｎｎ" too)."""
    return " ".join(unicodedata.normalize("NFKC", name).split()).casefold()
