"""Where tasks get their code and data: artifacts (git, S3, local), volumes, claim templates."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from sensors.spec.base import ScalarStr, SpecModel, exactly_one


class SecretKeyRef(SpecModel):
    """A key inside a Kubernetes Secret."""

    name: str = Field(description="Name of the Secret.")
    key: str = Field(description="Key inside the Secret.")


class GitArtifact(SpecModel):
    """Source code fetched from a git repository."""

    repo: str = Field(description="Repository URL (https or ssh).")
    revision: str = Field("HEAD", description="Branch, tag or commit to check out.")
    ssh_private_key_secret: SecretKeyRef | None = Field(
        None,
        alias="sshPrivateKeySecret",
        description="Secret holding the SSH private key for a private repository.",
    )
    username_secret: SecretKeyRef | None = Field(
        None, alias="usernameSecret", description="Secret holding the HTTPS user name."
    )
    password_secret: SecretKeyRef | None = Field(
        None, alias="passwordSecret", description="Secret holding the HTTPS password or token."
    )


class S3Artifact(SpecModel):
    """An object or prefix in an S3-compatible bucket."""

    endpoint: str | None = Field(None, description="S3 endpoint (host[:port]); AWS when unset.")
    bucket: str = Field(description="Bucket name.")
    key: str = Field(description="Object key or prefix.")
    region: str | None = Field(None, description="Bucket region.")
    insecure: bool = Field(False, description="Use plain HTTP instead of HTTPS.")
    access_key_secret: SecretKeyRef | None = Field(
        None, alias="accessKeySecret", description="Secret holding the access key id."
    )
    secret_key_secret: SecretKeyRef | None = Field(
        None, alias="secretKeySecret", description="Secret holding the secret access key."
    )


class LocalArtifact(SpecModel):
    """A directory on this machine (ranvier's local backend)."""

    path: str = Field(description="Directory, absolute or relative to the Axon file.")


class Artifact(SpecModel):
    """Named source material (code, data) that tasks build from or mount."""

    name: str = Field(description="Artifact name, referenced by `imageBuild.artifact`.")
    path: str | None = Field(None, description="Where the artifact is mounted inside tasks.")
    git: GitArtifact | None = Field(None, description="Fetch the artifact from git.")
    s3: S3Artifact | None = Field(None, description="Fetch the artifact from S3.")
    local: LocalArtifact | None = Field(None, description="Use a local directory (ranvier).")

    @model_validator(mode="after")
    def _one_source(self) -> Artifact:
        exactly_one(self, {"git": "git", "s3": "s3", "local": "local"}, "an artifact")
        return self


class HostPathVolume(SpecModel):
    """A directory on the Kubernetes node."""

    path: str = Field(description="Directory on the node.")
    type: str | None = Field(None, description="Kubernetes hostPath type (e.g. Directory).")


class FlexVolume(SpecModel):
    """A Kubernetes flexVolume (e.g. Rook/Ceph, as Myelin's examples use)."""

    driver: str = Field(description="Flex volume driver name.")
    fs_type: str | None = Field(None, alias="fsType", description="Filesystem type.")
    options: dict[str, ScalarStr] = Field(
        default_factory=dict, description="Driver-specific options."
    )
    read_only: bool = Field(False, alias="readOnly", description="Mount read-only.")
    secret_ref: dict[str, str] | None = Field(
        None, alias="secretRef", description="Secret passed to the driver ({name})."
    )


class PvcVolumeSource(SpecModel):
    """An existing PersistentVolumeClaim."""

    claim_name: str = Field(alias="claimName", description="Name of the claim.")
    read_only: bool = Field(False, alias="readOnly", description="Mount read-only.")


class NfsVolume(SpecModel):
    """An NFS export."""

    server: str = Field(description="NFS server host.")
    path: str = Field(description="Exported path.")
    read_only: bool = Field(False, alias="readOnly", description="Mount read-only.")


class EmptyDirVolume(SpecModel):
    """A scratch directory that lives as long as the pod."""

    medium: str | None = Field(None, description='Storage medium ("" or "Memory").')
    size_limit: ScalarStr | None = Field(None, alias="sizeLimit", description="Size limit.")


class Volume(SpecModel):
    """The Axon's shared store, as a Kubernetes volume."""

    name: str = Field(description="Volume name.")
    host_path: HostPathVolume | None = Field(None, alias="hostPath", description="Node path.")
    flex_volume: FlexVolume | None = Field(None, alias="flexVolume", description="Flex volume.")
    persistent_volume_claim: PvcVolumeSource | None = Field(
        None, alias="persistentVolumeClaim", description="An existing claim."
    )
    nfs: NfsVolume | None = Field(None, description="An NFS export.")
    empty_dir: EmptyDirVolume | None = Field(None, alias="emptyDir", description="Scratch dir.")

    @model_validator(mode="after")
    def _one_source(self) -> Volume:
        exactly_one(
            self,
            {
                "host_path": "hostPath",
                "flex_volume": "flexVolume",
                "persistent_volume_claim": "persistentVolumeClaim",
                "nfs": "nfs",
                "empty_dir": "emptyDir",
            },
            "a volume",
        )
        return self


class ClaimMetadata(SpecModel):
    """Metadata of the claim created from the template."""

    name: str = Field(description="Claim name.")
    labels: dict[str, ScalarStr] = Field(default_factory=dict, description="Claim labels.")
    annotations: dict[str, ScalarStr] = Field(
        default_factory=dict, description="Claim annotations."
    )


class ResourceRequirements(SpecModel):
    """Kubernetes compute or storage resources (quantities like `1Gi`, `500m`, `1`)."""

    requests: dict[str, ScalarStr] = Field(default_factory=dict, description="Requested amounts.")
    limits: dict[str, ScalarStr] = Field(default_factory=dict, description="Upper limits.")


AccessMode = Literal["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"]


def _default_access_modes() -> list[AccessMode]:
    return ["ReadWriteOnce"]


class ClaimSpec(SpecModel):
    """The PersistentVolumeClaim spec fields Myelin uses."""

    storage_class_name: str | None = Field(
        None, alias="storageClassName", description="Storage class of the claim."
    )
    access_modes: list[AccessMode] = Field(
        default_factory=_default_access_modes,
        alias="accessModes",
        description="Access modes of the claim.",
    )
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements, description="Requested storage (requests.storage)."
    )
    volume_mode: Literal["Filesystem", "Block"] | None = Field(
        None, alias="volumeMode", description="Filesystem (default) or Block."
    )
    volume_name: str | None = Field(
        None, alias="volumeName", description="Bind to this PersistentVolume."
    )


class VolumeClaimTemplate(SpecModel):
    """A PersistentVolumeClaim created for the Axon's shared store."""

    metadata: ClaimMetadata = Field(description="Claim metadata (name).")
    spec: ClaimSpec = Field(description="Claim spec.")
