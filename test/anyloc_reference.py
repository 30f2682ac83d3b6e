"""AnyLoc's pipeline written from AnyLoc's own code, independently of anyloc_ros.

Each function transcribes one step of the AnyLoc repository (Keetha et al., 2023) with the
libraries it uses (torch ops standing in for torchvision 0.14, numpy SVD for sklearn's PCA),
not with anyloc_ros code: the tests and bench/vlad.py compare the package against these.

- preprocess: dvgl_benchmark/datasets_ws.py `base_transform` (ToTensor, Normalize) then
  `T.functional.resize(img, [480, 640])` (torchvision 0.14 on a tensor: bilinear, no
  antialiasing), then scripts/dino_v2_vlad.py's `T.CenterCrop((h // 14 * 14, w // 14 * 14))`.
- value_facet: utilities.py `DinoV2ExtractFeatures`: a forward hook on block `layer`'s qkv
  projection, CLS token dropped, the value third, L2-normalised (`norm_descs=True`); the model
  is the torch.hub one, whose position embeddings are interpolated by `hub_pos_embed`
  (facebookresearch/dinov2 vision_transformer.py `interpolate_pos_encoding`: bicubic with scale
  factors (patches + 0.1) / M, the "historical kludge" offset, no antialiasing).
- hard_vlad: utilities.py `VLAD.generate` in hard mode: labels by cosine k-means `predict`,
  the full (n, K, D) residual tensor, a loop over the used clusters, intra- then L2-norm.
- pca_whitened: utilities.py `reduce_pca` (sklearn `PCA(whiten=True)`) then `norm_descs`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def preprocess(image: np.ndarray, size: tuple[int, int] = (480, 640), patch: int = 14) -> torch.Tensor:
    """uint8 HxWx3 RGB -> (1, 3, h, w) as AnyLoc feeds DINOv2."""
    x = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0  # ToTensor
    x = (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=False)[0]
    h, w = x.shape[1] // patch * patch, x.shape[2] // patch * patch
    top, left = int(round((x.shape[1] - h) / 2.0)), int(round((x.shape[2] - w) / 2.0))  # CenterCrop
    return x[:, top:top + h, left:left + w][None]


def hub_pos_embed(pos_embed: torch.Tensor, h: int, w: int, patch: int) -> torch.Tensor:
    """(1, 1 + M*M, D) -> (1, 1 + (h/p)(w/p), D): DINOv2's torch.hub `interpolate_pos_encoding`
    for an (h, w) input (its `w0, h0` name the input's dims 2 and 3: rows, then columns)."""
    import math

    n = pos_embed.shape[1] - 1
    w0, h0 = h // patch, w // patch
    if w0 * h0 == n and h == w:
        return pos_embed
    class_pos_embed, patch_pos_embed = pos_embed[:, 0], pos_embed[:, 1:].float()
    dim = pos_embed.shape[-1]
    w0, h0 = w0 + 0.1, h0 + 0.1
    patch_pos_embed = F.interpolate(
        patch_pos_embed.reshape(1, int(math.sqrt(n)), int(math.sqrt(n)), dim).permute(0, 3, 1, 2),
        scale_factor=(w0 / math.sqrt(n), h0 / math.sqrt(n)), mode="bicubic")
    assert int(w0) == patch_pos_embed.shape[-2] and int(h0) == patch_pos_embed.shape[-1]
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1).to(pos_embed.dtype)


def value_facet(model: torch.nn.Module, pixels: torch.Tensor, layer: int) -> torch.Tensor:
    """(1, 3, h, w) -> (n_patches, D) L2-normalised value-facet descriptors of a transformers DINOv2.

    transformers splits the hub model's fused qkv Linear into query/key/value Linears (named
    `value` or `v_proj` depending on the version); its value output is qkv's last third."""
    block = model.encoder.layer[layer]
    value = next(m for name, m in block.named_modules() if name.endswith(("attention.value", "v_proj")))
    out = {}
    handle = value.register_forward_hook(lambda mod, inp, output: out.setdefault("v", output))
    emb = model.embeddings
    patch = model.config.patch_size
    # the hub model's position-embedding rule in place of transformers' (an instance attribute)
    emb.interpolate_pos_encoding = lambda e, h, w: hub_pos_embed(emb.position_embeddings, h, w, patch)
    try:
        with torch.no_grad():
            model(pixel_values=pixels)
    finally:
        handle.remove()
        del emb.interpolate_pos_encoding
    res = out["v"][:, 1:, :]  # drop CLS (use_cls=False)
    return F.normalize(res, dim=-1)[0]


def hard_vlad(query_descs: torch.Tensor, c_centers: torch.Tensor, intra_norm: bool = True) -> torch.Tensor:
    """AnyLoc `VLAD.generate` (hard): (n, D) descriptors, (K, D) centres -> (K*D,)."""
    num_clusters, desc_dim = c_centers.shape
    query_descs = F.normalize(query_descs)  # norm_descs
    residuals = query_descs[:, None, :] - c_centers[None, :, :]  # [q, c, d]
    # fast_pytorch_kmeans KMeans(mode="cosine").predict: argmax of normalised dot products
    labels = (F.normalize(query_descs, dim=-1) @ F.normalize(c_centers, dim=-1).T).argmax(dim=1)
    un_vlad = torch.zeros(num_clusters * desc_dim)
    for k in set(labels.numpy().tolist()):
        cd_sum = residuals[labels == k, k].sum(dim=0)
        if intra_norm:
            cd_sum = F.normalize(cd_sum, dim=0)
        un_vlad[k * desc_dim:(k + 1) * desc_dim] = cd_sum
    return F.normalize(un_vlad, dim=0)


def pca_whitened(train: np.ndarray, test: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """sklearn PCA(dim, whiten=True).fit_transform(train) / .transform(test), then L2-normalised.

    sklearn: components from the SVD of the centred training set, whitened by
    sqrt(explained_variance_) with explained_variance_ = S**2 / (n - 1)."""
    mean = train.mean(axis=0)
    _, s, vt = np.linalg.svd(train - mean, full_matrices=False)
    scale = np.sqrt(s[:dim] ** 2 / (len(train) - 1))
    out = [((x - mean) @ vt[:dim].T) / scale for x in (train, test)]
    return tuple(x / np.linalg.norm(x, axis=1, keepdims=True) for x in out)  # type: ignore[return-value]

