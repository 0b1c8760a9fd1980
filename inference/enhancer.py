"""The NSF-HiFiGAN enhancer (`-eh`): re-render the output through the vocoder.

Upstream's `modules/enhancer.py`: the audio is resampled so that treating it
as the vocoder's rate shifts it by `-eak` semitones (`adaptive_key`, the rate
rounded to 100 Hz), turned into the vocoder's mel, rendered with the pitch
moved along, and resampled back. Unlike upstream, the result is returned at
the caller's rate and length (upstream returns the vocoder's rate, which is
wrong for models at other rates), so it lines up with the input.
"""

from __future__ import annotations

import librosa
import numpy as np
import torch

from diffusion.vocoder import Vocoder


def adaptive_rate(vocoder_rate: int, adaptive_key: float) -> int:
    """The rate the audio is resampled to before it is read as `vocoder_rate` audio."""
    factor = 2 ** (-adaptive_key / 12)
    return 100 * int(np.round(vocoder_rate / factor / 100))


class Enhancer:
    """One loaded vocoder used as an enhancer."""

    def __init__(self, vocoder: Vocoder) -> None:
        self.vocoder = vocoder
        vocoder.network()  # missing weights fail at load, not mid-song

    def _pitch_track(
        self, f0: torch.Tensor, sample_rate: int, hop_size: int, n_frames: int, real_factor: float
    ) -> torch.Tensor:
        """f0 (1, T) at the caller's frames -> (1, n_frames, 1) at the vocoder's frames."""
        pitch = f0[0].detach().float().cpu().numpy() * real_factor
        time_source = hop_size / sample_rate * np.arange(len(pitch)) / real_factor
        time_target = (
            self.vocoder.vocoder_hop_size / self.vocoder.vocoder_sample_rate * np.arange(n_frames)
        )
        track = np.interp(time_target, time_source, pitch, left=pitch[0], right=pitch[-1])
        return torch.from_numpy(track).float()[None, :, None].to(self.vocoder.device)

    def enhance(
        self,
        audio: torch.Tensor,
        sample_rate: int,
        f0: torch.Tensor,
        hop_size: int,
        adaptive_key: float = 0,
    ) -> torch.Tensor:
        """audio (N,) at `sample_rate`, f0 (1, N // hop_size) Hz -> enhanced audio (N,)."""
        vocoder_rate = int(self.vocoder.vocoder_sample_rate)
        rate = adaptive_rate(vocoder_rate, adaptive_key)
        samples = audio.detach().float().cpu().numpy()
        if sample_rate != rate:
            samples = librosa.resample(samples, orig_sr=sample_rate, target_sr=rate)
        n_frames = len(samples) // self.vocoder.vocoder_hop_size + 1
        pitch = self._pitch_track(f0, sample_rate, hop_size, n_frames, vocoder_rate / rate)
        mel = self.vocoder.mel.extract(torch.from_numpy(samples)[None].to(self.vocoder.device))
        rendered = self.vocoder.infer(mel, pitch)[0, 0].float().cpu().numpy()
        if rate != sample_rate:
            rendered = librosa.resample(rendered, orig_sr=rate, target_sr=sample_rate)
        length = audio.shape[-1]
        rendered = np.pad(rendered[:length], (0, max(0, length - len(rendered))))
        return torch.from_numpy(rendered.astype(np.float32)).to(audio.device)
