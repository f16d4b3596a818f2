"""Names, labels and annotations of the objects ranvier creates, kept within Kubernetes' rules.

Labels are for selecting (sanitised, with a digest when anything had to change, so different
names never share a value); annotations keep the exact names.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

from events.errors import RanvierError
from sensors.spec import Axon

# The Axon custom resource (manifests/crd).
GROUP: Final = "ranvier.dev"
VERSION: Final = "v1alpha1"
PLURAL: Final = "axons"
KIND: Final = "Axon"

# Labels (selectable, sanitised) and annotations (exact).
MANAGED_BY: Final = "app.kubernetes.io/managed-by"
MANAGER: Final = "ranvier"
L_AXON: Final = "ranvier.dev/axon"
L_TASK: Final = "ranvier.dev/task"
L_RUN: Final = "ranvier.dev/run"
L_VERSION: Final = "ranvier.dev/version"
L_MODEL_VERSION: Final = "ranvier.dev/model-version"
L_ROLE: Final = "ranvier.dev/role"
L_DEPLOYMENT: Final = "ranvier.dev/deployment"
A_AXON: Final = "ranvier.dev/axon"
A_NAMESPACE: Final = "ranvier.dev/namespace"
A_TASK: Final = "ranvier.dev/task"
A_RUN: Final = "ranvier.dev/run-id"
A_ACTION: Final = "ranvier.dev/action"
A_IMAGE: Final = "ranvier.dev/image"

ROLE_TASK: Final = "task"
ROLE_BUILD: Final = "build"
ROLE_SERVER: Final = "server"
ROLE_ANCHOR: Final = "anchor"
ROLE_STORE: Final = "store"

STORE_MOUNT: Final = "/ranvier"
DATA_PATH: Final = f"{STORE_MOUNT}/data"
MODELS_PATH: Final = f"{STORE_MOUNT}/models"
SERVER_PORT: Final = 8000
SERVICE_PORT: Final = 80
TERMINATION_LOG: Final = "/dev/termination-log"
JOB_TTL: Final = 86_400  # finished Jobs stay a day, long enough for a watcher to catch up

_LABEL_BAD = re.compile(r"[^A-Za-z0-9_.-]")
_DNS_BAD = re.compile(r"[^a-z0-9-]")
_ENV_BAD = re.compile(r"[^A-Za-z0-9_]")


class RenderError(RanvierError, ValueError):
    """An Axon task that cannot become Kubernetes objects as written (say what to change)."""


# ---------------------------------------------------------------------------------------------
# Names


def _digest(text: str, size: int = 4) -> str:
    return hashlib.blake2s(text.encode("utf-8"), digest_size=size).hexdigest()


def label_value(text: str) -> str:
    """`text` as a label value: at most 63 of `[A-Za-z0-9_.-]`, alphanumeric at both ends.

    Values that are already valid are kept; anything else is cleaned and gets a digest of the
    original, so two different names never map to the same value.
    """
    if len(text) <= 63 and re.fullmatch(r"([A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?)?", text):
        return text
    cleaned = _LABEL_BAD.sub("-", text).strip("-_.")[:54].strip("-_.")
    return f"{cleaned}-{_digest(text)}" if cleaned else _digest(text)


def dns_label(*parts: str, limit: int = 63) -> str:
    """A DNS-1035 label (lowercase, digits, `-`; starts with a letter) made of `parts`.

    Kept readable when it fits; shortened with a digest of all parts when it does not, or when
    cleaning changed anything, so distinct inputs give distinct names.
    """
    raw = "-".join(parts)
    cleaned = re.sub(r"-+", "-", _DNS_BAD.sub("-", raw.lower())).strip("-")
    if not cleaned or not cleaned[0].isalpha():
        cleaned = f"r-{cleaned}".rstrip("-")
    if cleaned == raw and len(cleaned) <= limit:
        return cleaned
    digest = _digest(raw)
    return f"{cleaned[: limit - len(digest) - 1].rstrip('-')}-{digest}"


def anchor_name(axon: str) -> str:
    """The per-Axon ConfigMap that owns its objects when there is no Axon custom object."""
    return dns_label("ranvier-axon", axon)


def job_name(axon: str, task: str, run_id: str) -> str:
    """The Job of one task run."""
    return dns_label(axon, task, run_id)


def server_name(axon: str, task: str, version: str) -> str:
    """The Deployment and Service of one deploy task serving one model version."""
    return dns_label(axon, task, f"v{version}")


def claim_name(axon: Axon) -> str | None:
    """The PersistentVolumeClaim of the Axon's store, if it declares a volumeClaimTemplate."""
    template = axon.spec.volume_claim_template
    if template is None:
        return None
    return dns_label(axon.metadata.name, template.metadata.name)


def env_name(task_name: str) -> str:
    """The DATA_PATH_<Task> variable (as the local backend names it)."""
    return f"DATA_PATH_{_ENV_BAD.sub('_', task_name)}"
