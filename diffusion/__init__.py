"""Shallow diffusion (upstream so-vits-svc 4.1's Unit2Mel): the model, its samplers, its files.

| file | role |
|---|---|
| `wavenet.py` | the denoiser network |
| `gaussian.py` | GaussianDiffusion: schedule buffers, training loss, sampling entry |
| `samplers.py` | ancestral DDPM, DDIM, PNDM on the discrete steps |
| `noise_schedule.py`, `dpm_solver.py`, `unipc.py` | DPM-Solver(++) and UniPC |
| `unit2mel.py` | Unit2Mel: condition embeddings, speakers, pitch augmentation |
| `config.py` | the diffusion YAML, typed and checked |
| `files.py` | `model_<step>.pt` reading, writing and loading with its config |
"""
