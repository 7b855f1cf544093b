"""Entry point for `ray job submit`: the same arguments as `selfreward run`.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \
        python -m jobs.self_reward jobs/configs/tiny-cpu.yaml --run-dir /abs/path/run

Inside a job, Ray is the job's cluster (RAY_ADDRESS is set by Ray);
resubmitting with the same --run-dir resumes.
"""

import sys

from orchestrator.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
