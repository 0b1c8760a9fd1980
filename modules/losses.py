"""GAN and VAE losses of so-vits-svc training (pure functions, computed in float32)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def feature_loss(
    fmap_r: Sequence[Sequence[torch.Tensor]], fmap_g: Sequence[Sequence[torch.Tensor]]
) -> torch.Tensor:
    """Feature matching: 2 * sum of mean |real - fake| over every discriminator layer."""
    loss = torch.zeros((), device=fmap_g[0][0].device)
    for real_maps, fake_maps in zip(fmap_r, fmap_g):
        for real, fake in zip(real_maps, fake_maps):
            loss = loss + torch.mean(torch.abs(real.float().detach() - fake.float()))
    return loss * 2


def discriminator_loss(
    disc_real_outputs: Sequence[torch.Tensor], disc_generated_outputs: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """LSGAN discriminator loss: mean (1 - D(real))^2 + mean D(fake)^2 per discriminator.

    The per-discriminator terms come back as detached 0-d tensors, not floats:
    turning them into Python numbers would make every training step wait for
    the device.
    """
    loss = torch.zeros((), device=disc_real_outputs[0].device)
    r_losses: list[torch.Tensor] = []
    g_losses: list[torch.Tensor] = []
    for real, fake in zip(disc_real_outputs, disc_generated_outputs):
        r_loss = torch.mean((1 - real.float()) ** 2)
        g_loss = torch.mean(fake.float() ** 2)
        loss = loss + r_loss + g_loss
        r_losses.append(r_loss.detach())
        g_losses.append(g_loss.detach())
    return loss, r_losses, g_losses


def generator_loss(
    disc_outputs: Sequence[torch.Tensor],
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """LSGAN generator loss: sum over discriminators of mean (1 - D(fake))^2."""
    loss = torch.zeros((), device=disc_outputs[0].device)
    gen_losses: list[torch.Tensor] = []
    for fake in disc_outputs:
        term = torch.mean((1 - fake.float()) ** 2)
        gen_losses.append(term)
        loss = loss + term
    return loss, gen_losses


def kl_loss(
    z_p: torch.Tensor,
    logs_q: torch.Tensor,
    m_p: torch.Tensor,
    logs_p: torch.Tensor,
    z_mask: torch.Tensor,
) -> torch.Tensor:
    """KL between the flowed posterior sample z_p and the prior N(m_p, exp(logs_p)).

    Averaged over the unmasked (channel, frame) positions.
    """
    z_p, logs_q, m_p, logs_p = z_p.float(), logs_q.float(), m_p.float(), logs_p.float()
    z_mask = z_mask.float()
    kl = logs_p - logs_q - 0.5
    kl = kl + 0.5 * ((z_p - m_p) ** 2) * torch.exp(-2.0 * logs_p)
    return torch.sum(kl * z_mask) / torch.sum(z_mask)


def gan_generator_losses(
    y_d_hat_g: list[torch.Tensor],
    fmap_r: list[list[torch.Tensor]],
    fmap_g: list[list[torch.Tensor]],
    y_mel: torch.Tensor,
    y_hat_mel: torch.Tensor,
    c_mel: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The generator's fixed-shape losses (adversarial, feature matching, weighted mel L1).

    One function so that `train.compile` can fuse them into a few kernels.
    """
    loss_gen, _ = generator_loss(y_d_hat_g)
    loss_fm = feature_loss(fmap_r, fmap_g)
    loss_mel = torch.nn.functional.l1_loss(y_mel, y_hat_mel) * c_mel
    return loss_gen, loss_fm, loss_mel
