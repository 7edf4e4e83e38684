"""Execute one of the project's real jobs for one partition with its default (multiprocess) executor.

Run as a subprocess by test_gpu_pool_real_assets.py, so that several runs can be submitted at once against
one instance: `python -m ens_assets_tests.orchestration.project_job JOB PARTITION` with ENS_ASSETS_PARAMS and
DAGSTER_HOME set.
"""

import os
import sys

import dagster as dg

JOB_ENV = "ENS_ASSETS_TEST_JOB"


def project_job() -> dg.JobDefinition:
    """Module-level so the multiprocess executor's step processes can reconstruct it."""
    from ens_assets.defs.build import build_definitions

    return build_definitions().resolve_job_def(os.environ[JOB_ENV])


def main(job_name: str, partition: str) -> int:
    os.environ[JOB_ENV] = job_name
    tags = project_job().partitions_def.get_tags_for_partition_key(partition)
    with dg.DagsterInstance.get() as instance:
        result = dg.execute_job(dg.reconstructable(project_job), instance, tags=tags)
        print(result.run_id)
        return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
