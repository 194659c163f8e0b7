"""What a training run needs beyond the model (a tool: loaded when used, never by the core).

* ``checkpoint``: atomic, recoverable safetensors training checkpoints;
* ``run_results``: ``results.json``, what a run measured and how (``RunResults``, ``TrainingSetup``);
* ``distributed``: the one distributed start (torchrun; gloo on CPU, nccl on GPUs), each process's device,
  and ``DistributedJob``, the job as a training loop uses it;
* ``folder_claim``: ``FolderClaim``, one run per output folder.
"""
