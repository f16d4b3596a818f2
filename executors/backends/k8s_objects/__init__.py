"""The Kubernetes objects an Axon's actions create, as plain dicts (pure: no client, no I/O).

Keeping the rendering apart from the client means `ranvier k8s render` prints exactly what the
backend would create, and the tests validate every object against the official schemas without a
cluster. The backend (`executors.backends.kubernetes`) only adds what the cluster knows: the
owner's uid, and which images already exist.

What an Axon becomes:

- container and train tasks: a `Job` per run (`backoffLimit: 0`: retries are the sensors' job);
- spark tasks, and tfJob tasks (or train tasks with a `tfJobSpec`): a `SparkApplication` or a
  `TFJob` per run, which the Spark and Kubeflow training operators carry out;
- deploy tasks: a `Deployment` and a `Service` per (task, model version), re-labelled by each run;
- an `imageBuild` without `image`: a kaniko `Job` that builds the Dockerfile from the artifact at
  `buildLocation` and pushes `<registry>/<repositoryName>:<content hash>` (s2i is refused);
- `volumeClaimTemplate`: one `PersistentVolumeClaim` per Axon; `volume`: used as given; either
  way the store is mounted at `/ranvier` (`DATA_PATH=/ranvier/data`, models under
  `/ranvier/models`), as the local backend lays out its workspace;
- git artifacts: an init container clones the revision (with the ssh key Secret when given)
  into a volume mounted at the artifact's `path`.

Ownership: every object carries an ownerReference to the Axon custom object when one exists in
the namespace, else to a per-Axon ConfigMap anchor (`ranvier-axon-<name>`). Deleting either
deletes everything the Axon created, through Kubernetes' garbage collector.

Labels are for selecting (sanitised to Kubernetes' label rules, with a digest when anything had
to change, so different names never share a value); annotations keep the exact names and the
action request, so the lifecycle watcher can report a run without asking the executor.

The package, one module a concern: `names` (names, labels, annotations), `ownership` (settings,
owner, a run's labels), `volumes` (the store, git artifacts and their init containers), `pods`
(a run's pod), `jobs` (which tasks run here; Jobs), `operators` (SparkApplications, TFJobs),
`servers` (model-server Deployments and Services), `builds` (images and kaniko Jobs), `render`
(`ranvier k8s render`), `crd` (the Axon CRD).
"""

from __future__ import annotations

from executors.backends.k8s_objects.builds import (
    build_job,
    build_job_name,
    build_source,
    content_tag,
    image_ref,
)
from executors.backends.k8s_objects.crd import (
    MYELIN_GROUPS,
    PRINTER_COLUMNS,
    axon_crd,
)
from executors.backends.k8s_objects.jobs import (
    check_runnable,
    run_kind,
    task_job,
    task_object,
)
from executors.backends.k8s_objects.names import (
    A_ACTION,
    A_AXON,
    A_IMAGE,
    A_NAMESPACE,
    A_RUN,
    A_TASK,
    DATA_PATH,
    GROUP,
    JOB_TTL,
    KIND,
    L_AXON,
    L_DEPLOYMENT,
    L_MODEL_VERSION,
    L_ROLE,
    L_RUN,
    L_TASK,
    L_VERSION,
    MANAGED_BY,
    MANAGER,
    MODELS_PATH,
    PLURAL,
    ROLE_ANCHOR,
    ROLE_BUILD,
    ROLE_SERVER,
    ROLE_STORE,
    ROLE_TASK,
    SERVER_PORT,
    SERVICE_PORT,
    STORE_MOUNT,
    TERMINATION_LOG,
    VERSION,
    RenderError,
    anchor_name,
    claim_name,
    dns_label,
    env_name,
    job_name,
    label_value,
    server_name,
)
from executors.backends.k8s_objects.operators import (
    DEFAULT_SPARK_VERSION,
    SPARK_API,
    SPARK_KIND,
    SPARK_PLURAL,
    TF_CONTAINER,
    TFJOB_API,
    TFJOB_KIND,
    TFJOB_PLURAL,
    is_tf_job,
    spark_application,
    spark_conf,
    tf_job,
)
from executors.backends.k8s_objects.ownership import (
    PLACEHOLDER_UID,
    Owner,
    RenderSettings,
    Run,
    anchor_config_map,
    placeholder_owner,
    run_annotations,
    run_labels,
    store_claim,
)
from executors.backends.k8s_objects.pods import (
    model_path,
)
from executors.backends.k8s_objects.render import (
    RENDER_ACTIONS,
    render_axon,
    render_request,
)
from executors.backends.k8s_objects.servers import (
    server_objects,
    service_url,
)

__all__ = [
    "A_ACTION",
    "A_AXON",
    "A_IMAGE",
    "A_NAMESPACE",
    "A_RUN",
    "A_TASK",
    "DATA_PATH",
    "DEFAULT_SPARK_VERSION",
    "GROUP",
    "JOB_TTL",
    "KIND",
    "L_AXON",
    "L_DEPLOYMENT",
    "L_MODEL_VERSION",
    "L_ROLE",
    "L_RUN",
    "L_TASK",
    "L_VERSION",
    "MANAGED_BY",
    "MANAGER",
    "MODELS_PATH",
    "MYELIN_GROUPS",
    "PLACEHOLDER_UID",
    "PLURAL",
    "PRINTER_COLUMNS",
    "RENDER_ACTIONS",
    "ROLE_ANCHOR",
    "ROLE_BUILD",
    "ROLE_SERVER",
    "ROLE_STORE",
    "ROLE_TASK",
    "SERVER_PORT",
    "SERVICE_PORT",
    "SPARK_API",
    "SPARK_KIND",
    "SPARK_PLURAL",
    "STORE_MOUNT",
    "TERMINATION_LOG",
    "TFJOB_API",
    "TFJOB_KIND",
    "TFJOB_PLURAL",
    "TF_CONTAINER",
    "VERSION",
    "Owner",
    "RenderError",
    "RenderSettings",
    "Run",
    "anchor_config_map",
    "anchor_name",
    "axon_crd",
    "build_job",
    "build_job_name",
    "build_source",
    "check_runnable",
    "claim_name",
    "content_tag",
    "dns_label",
    "env_name",
    "image_ref",
    "is_tf_job",
    "job_name",
    "label_value",
    "model_path",
    "placeholder_owner",
    "render_axon",
    "render_request",
    "run_annotations",
    "run_kind",
    "run_labels",
    "server_name",
    "server_objects",
    "service_url",
    "spark_application",
    "spark_conf",
    "store_claim",
    "task_job",
    "task_object",
    "tf_job",
]
