"""The volumes a run's pod mounts, and the init containers that fill them.

The Axon's store is mounted at `/ranvier` (a claim from `volumeClaimTemplate`, the `volume` as
given, or a scratch dir); each git artifact is cloned by an init container into a volume
mounted at the artifact's `path`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from executors.backends.k8s_objects.names import STORE_MOUNT, claim_name, dns_label
from executors.backends.k8s_objects.ownership import RenderSettings
from sensors.spec import Artifact, Axon, GitArtifact


def store_volume(axon: Axon) -> dict[str, Any]:
    """The pod volume of the Axon's store (claim, the given volume, or a scratch dir)."""
    name = claim_name(axon)
    if name is not None:
        return {"name": "store", "persistentVolumeClaim": {"claimName": name}}
    volume = axon.spec.volume
    if volume is None:
        return {"name": "store", "emptyDir": {}}
    if volume.host_path is not None:
        source: dict[str, Any] = {"path": volume.host_path.path}
        if volume.host_path.type is not None:
            source["type"] = volume.host_path.type
        return {"name": "store", "hostPath": source}
    if volume.flex_volume is not None:
        flex = volume.flex_volume
        source = {"driver": flex.driver, "readOnly": flex.read_only}
        if flex.fs_type is not None:
            source["fsType"] = flex.fs_type
        if flex.options:
            source["options"] = dict(flex.options)
        if flex.secret_ref is not None:
            source["secretRef"] = dict(flex.secret_ref)
        return {"name": "store", "flexVolume": source}
    if volume.persistent_volume_claim is not None:
        pvc = volume.persistent_volume_claim
        return {
            "name": "store",
            "persistentVolumeClaim": {"claimName": pvc.claim_name, "readOnly": pvc.read_only},
        }
    if volume.nfs is not None:
        nfs = volume.nfs
        return {
            "name": "store",
            "nfs": {"server": nfs.server, "path": nfs.path, "readOnly": nfs.read_only},
        }
    empty = volume.empty_dir
    source = {}
    if empty is not None and empty.medium is not None:
        source["medium"] = empty.medium
    if empty is not None and empty.size_limit is not None:
        source["sizeLimit"] = empty.size_limit
    return {"name": "store", "emptyDir": source}


def artifact_mount(artifact: Artifact) -> str:
    return artifact.path or f"/artifacts/{artifact.name}"


def artifact_volume(artifact: Artifact) -> str:
    return dns_label("artifact", artifact.name)


# Clones $GIT_REPO at $GIT_REVISION into $GIT_DEST. The script never interpolates user text:
# repo, revision and credentials are variables.
_GIT_CLONE: Final = (
    "set -eu\n"
    'if [ -n "${GIT_PASSWORD:-}" ]; then\n'
    '  set -- -c "credential.helper=!f() { echo username=\\$GIT_USERNAME; '
    'echo password=\\$GIT_PASSWORD; }; f"\n'
    "fi\n"
    'git "$@" clone --quiet --no-checkout "$GIT_REPO" "$GIT_DEST"\n'
    'git -C "$GIT_DEST" checkout --quiet --detach "$GIT_REVISION" 2>/dev/null || '
    'git -C "$GIT_DEST" checkout --quiet --detach "origin/$GIT_REVISION"\n'
)


def _git_credentials(
    artifact: Artifact, git: GitArtifact
) -> tuple[list[Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, mounts, env) giving the clone its ssh key and its username/password Secrets."""
    volumes: list[Any] = []
    mounts: list[dict[str, Any]] = []
    env: list[dict[str, Any]] = []
    if git.ssh_private_key_secret is not None:
        key_volume = dns_label("git-ssh", artifact.name)
        volumes.append(
            {
                "name": key_volume,
                "secret": {
                    "secretName": git.ssh_private_key_secret.name,
                    "items": [{"key": git.ssh_private_key_secret.key, "path": "id"}],
                    "defaultMode": 0o400,
                },
            }
        )
        mounts.append({"name": key_volume, "mountPath": "/etc/ranvier/git-ssh", "readOnly": True})
        env.append(
            {
                "name": "GIT_SSH_COMMAND",
                "value": "ssh -i /etc/ranvier/git-ssh/id -o StrictHostKeyChecking=accept-new "
                "-o UserKnownHostsFile=/tmp/known_hosts",
            }
        )
    for var, secret in (
        ("GIT_USERNAME", git.username_secret),
        ("GIT_PASSWORD", git.password_secret),
    ):
        if secret is not None:
            env.append(
                {
                    "name": var,
                    "valueFrom": {"secretKeyRef": {"name": secret.name, "key": secret.key}},
                }
            )
    return volumes, mounts, env


def git_init(artifact: Artifact, settings: RenderSettings) -> tuple[dict[str, Any], list[Any]]:
    """The init container cloning a git artifact, and the volumes it needs."""
    git = artifact.git
    assert git is not None
    volume = artifact_volume(artifact)
    mount = artifact_mount(artifact)
    secret_volumes, secret_mounts, secret_env = _git_credentials(artifact, git)
    env: list[dict[str, Any]] = [
        {"name": "GIT_REPO", "value": git.repo},
        {"name": "GIT_REVISION", "value": git.revision},
        {"name": "GIT_DEST", "value": mount},
        {"name": "GIT_TERMINAL_PROMPT", "value": "0"},
        {"name": "HOME", "value": "/tmp"},
        *secret_env,
    ]
    container = {
        "name": dns_label("clone", artifact.name),
        "image": settings.git_image,
        "command": ["sh", "-c", _GIT_CLONE],
        "env": env,
        "volumeMounts": [{"name": volume, "mountPath": mount}, *secret_mounts],
        "securityContext": _restricted(),
    }
    return container, [{"name": volume, "emptyDir": {}}, *secret_volumes]


def _restricted() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def prepare_init(paths: Sequence[str], settings: RenderSettings) -> dict[str, Any]:
    """An init container creating the run's directories in the store (argv, no shell)."""
    return {
        "name": "prepare-store",
        "image": settings.busybox_image,
        "command": ["mkdir", "-p", *paths],
        "volumeMounts": [{"name": "store", "mountPath": STORE_MOUNT}],
        "securityContext": _restricted(),
    }


def git_artifacts(axon: Axon) -> list[Artifact]:
    return [a for a in axon.spec.artifacts if a.git is not None]
