"""Named reference configurations of the released checkpoints: lookup, layer structure, params.

No PyTorch here: each family's reference `state_dict` names and shapes are derived below from its
reference constructor (the code in the config's `source`), checked against the golden `state_dict`
entries, and filled with random numbers in PyTorch layout; `from_reference` must consume every
tensor. Parameter counts are compared with the numbers the repositories and papers state.
"""

import json
import math
import re

import numpy as np
import pytest

import kvid
from kvid.models.dualformer import reference as dualformer_reference
from kvid.models.dualformer.model import check_config as dualformer_check_config
from kvid.models.xvit import reference as xvit_reference
from tests.conftest import REPO_ROOT

_BUFFER_SUFFIXES = (
    "running_mean",
    "running_var",
    "num_batches_tracked",
    "_relative_position_index",
)


# ------------------------------------------------------------------------------------------------
# Reference state_dict layouts, {name: shape}, derived from the reference constructors.
# ------------------------------------------------------------------------------------------------
def _linear(spec, name, out_features, in_features, bias=True):
    spec[f"{name}.weight"] = (out_features, in_features)
    if bias:
        spec[f"{name}.bias"] = (out_features,)


def _norm(spec, name, channels, batch=False):
    spec[f"{name}.weight"] = spec[f"{name}.bias"] = (channels,)
    if batch:
        spec[f"{name}.running_mean"] = spec[f"{name}.running_var"] = (channels,)
        spec[f"{name}.num_batches_tracked"] = ()


def _make_divisible(value, divisor):
    new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new_value + divisor if new_value < 0.9 * value else new_value


def mobile_former_spec(kwargs: dict) -> dict:
    """AAboys/MobileFormer `MobileFormer(**kwargs)` (mobile_former.py, dna_blocks.py)."""
    k = dict(width_mult=1.0, group_num=1, se_flag=[2, 0, 2, 0], hyper_reduction_ratio=4,
             gbr_dynamic=[False, False, False], gbr_ffn=False, last_exp=6, cls_token_num=1,
             kernel_size=(3, 3), num_classes=1000, stem_chs=16, num_features=1280,
             token_num=6, token_dim=128)  # fmt: skip
    k.update(kwargs)
    groups, se, dim = k["group_num"], k["se_flag"], k["token_dim"]
    squeeze = dim // k["hyper_reduction_ratio"]
    spec = {"tokens.weight": (k["token_num"], dim), "stem.0.weight": (k["stem_chs"], 3, 3, 3)}
    _norm(spec, "stem.1", k["stem_chs"], batch=True)

    def conv_bn(prefix, conv, bn, out_c, in_per_group, kernel):
        spec[f"{prefix}.{conv}.weight"] = (out_c, in_per_group, kernel, kernel)
        _norm(spec, f"{prefix}.{bn}", out_c, batch=True)

    def hyper(prefix, out_features):
        _linear(spec, f"{prefix}.hyper.0", squeeze, dim)
        _linear(spec, f"{prefix}.hyper.2", out_features, squeeze)

    def local_global(prefix, channels):
        if k["gbr_dynamic"][0]:
            _linear(spec, f"{prefix}.alpha.0", channels, dim)
        _linear(spec, f"{prefix}.q", channels, dim)
        _linear(spec, f"{prefix}.proj", dim, channels)
        _norm(spec, f"{prefix}.layer_norm", dim)

    divisor = 8 if k["width_mult"] > 1.01 else 4
    inp, index = k["stem_chs"], 0
    k1, k2 = k["kernel_size"]
    for row, (kind, e1, c, n, _stride, e2) in enumerate(k["block_args"]):
        oup = _make_divisible(c * k["width_mult"], divisor if row > 0 else 4)
        for _ in range(n):
            p = f"features.{index}"
            if e1 == 1 or e2 == 0:  # conv alone: dw 3x3, BN, ReLU6, [shuffle], pw, BN
                conv_bn(p, "conv.0", "conv.1", inp * e1, 1, 3)
                conv_bn(p, "conv.4", "conv.5", oup, inp * e1 // groups, 1)
            else:
                local_global(f"{p}.local_global", inp)
                if k["gbr_ffn"]:
                    _linear(spec, f"{p}.global_block.ffn.0", 2 * dim, dim)
                    _linear(spec, f"{p}.global_block.ffn.2", dim, 2 * dim)
                    _norm(spec, f"{p}.global_block.ffn_norm", dim)
                _linear(spec, f"{p}.global_block.q", dim, dim)
                _linear(spec, f"{p}.global_block.channel_mlp", dim, dim)
                _norm(spec, f"{p}.global_block.layer_norm", dim)
                _linear(spec, f"{p}.global_local.k", oup, dim)
                _linear(spec, f"{p}.global_local.proj", oup, dim)
                if kind == "DnaBlock3":
                    hidden1, hidden2 = round(inp * e1), round(oup * e2)
                    conv_bn(p, "conv1.0", "conv1.1", hidden1, 1, k1)
                    conv_bn(p, "conv2.0", "conv2.1", oup, hidden1 // groups, 1)
                    conv_bn(p, "conv3.0", "conv3.1", hidden2, 1, k2)
                    conv_bn(p, "conv4.0", "conv4.1", oup, hidden2 // groups, 1)
                    dyrelu = (("hyper1", hidden1, se[0]), ("hyper3", hidden2, se[2]))
                else:
                    hidden = round(inp * e1)
                    conv_bn(p, "conv1.0", "conv1.1", hidden, inp // groups, 1)
                    conv_bn(p, "conv2.0", "conv2.1", hidden, 1, k1)
                    conv_bn(p, "conv3.0", "conv3.1", oup, hidden // groups, 1)
                    dyrelu = (("hyper1", hidden, se[0]), ("hyper2", hidden, se[2]))
                for name, channels, functions in dyrelu:
                    if functions > 0:
                        hyper(f"{p}.{name}", channels * functions)
            inp, index = oup, index + 1
    local_global("local_global", inp)
    hidden = inp * k["last_exp"]
    conv_bn("classifier", "conv.1", "conv.2", hidden, inp // groups, 1)
    _linear(spec, "classifier.fc.0", k["num_features"], hidden + k["cls_token_num"] * dim)
    _norm(spec, "classifier.fc.1", k["num_features"], batch=True)
    _linear(spec, "classifier.classifier.1", k["num_classes"], k["num_features"])
    return spec


def dualformer_spec(constructor: dict) -> dict:
    """sail-sg/dualformer `DualFormer(**backbone_kwargs)` + `I3DHead`, mmaction names."""
    b = dict(patch_size=(2, 4, 4), mlp_ratios=[4] * 4, qkv_bias=False,
             coarse_pysizes=[(4, 4, 4)] * 4, temporal_pooling=[-1, 1, 1, 1])  # fmt: skip
    b.update(constructor["backbone_kwargs"])
    dims, patch = b["embed_dims"], b["patch_size"]
    pooling = [patch[0], *b["temporal_pooling"][1:]]
    sizes, size = [], b["video_size"]
    for stage in range(len(b["depths"])):  # DualFormer.__init__: self.nvs
        spatial = (4, 2, 2, 2)[stage]
        size = (size[0] // pooling[stage], size[1] // spatial, size[2] // spatial)
        sizes.append(size)
    spec = {}
    for stage, depth in enumerate(b["depths"]):
        dim, prefix = dims[stage], f"backbone.patch_embeds.{stage}"
        in_c, kernel = (3, patch) if stage == 0 else (dims[stage - 1], (pooling[stage], 2, 2))
        spec[f"{prefix}.proj.weight"], spec[f"{prefix}.proj.bias"] = (dim, in_c, *kernel), (dim,)
        _norm(spec, f"{prefix}.norm", dim)
        for index in range(depth):
            p = f"backbone.blocks.{stage}.{index}"
            _norm(spec, f"{p}.norm1", dim)
            _norm(spec, f"{p}.norm2", dim)
            hidden = int(dim * b["mlp_ratios"][stage])
            _linear(spec, f"{p}.mlp.fc1", hidden, dim)
            _linear(spec, f"{p}.mlp.fc2", dim, hidden)
            _linear(spec, f"{p}.attn.proj", dim, dim)
            if index % 2 == 0:  # LWAttention (local_size != (1, 1, 1))
                _linear(spec, f"{p}.attn.qkv", 3 * dim, dim, b["qkv_bias"])
                continue
            _linear(spec, f"{p}.attn.q", dim, dim, b["qkv_bias"])
            _linear(spec, f"{p}.attn.kv", 2 * dim, dim, b["qkv_bias"])
            fine = [r // t for r, t in zip(sizes[stage], b["fine_pysizes"][stage], strict=True)]
            if math.prod(fine) > 1:
                spec[f"{p}.attn.sr.weight"], spec[f"{p}.attn.sr.bias"] = (dim, 1, *fine), (dim,)
                _norm(spec, f"{p}.attn.norm", dim)
                if stage < 2:
                    coarse = [r // t for r, t in zip(sizes[stage], b["coarse_pysizes"][stage])]
                    second = [c // k for c, k in zip(coarse, (1, 7, 7), strict=True)]
                    spec[f"{p}.attn.lr.0.weight"] = (dim, 1, 1, 7, 7)
                    spec[f"{p}.attn.lr.0.bias"] = (dim,)
                    _norm(spec, f"{p}.attn.lr.1", dim, batch=True)
                    spec[f"{p}.attn.lr.3.weight"] = (dim, 1, *second)
                    spec[f"{p}.attn.lr.3.bias"] = (dim,)
        spec[f"backbone.pos_block.{stage}.proj.0.weight"] = (dim, 1, 3, 3, 3)
        spec[f"backbone.pos_block.{stage}.proj.0.bias"] = (dim,)
    _norm(spec, "backbone.norm", dims[-1])
    head = constructor["head_kwargs"]
    _linear(spec, "cls_head.fc_cls", head["num_classes"], head["in_channels"])
    return spec


def xvit_spec(constructor: dict) -> dict:
    """1adrianb/video-transformers `XVIT(cfg)`: the repository's ViT and `VitHead`."""
    vit = dict(patch_size=16, embed_dim=768, depth=12, mlp_ratio=4.0, qkv_bias=True)
    vit.update(constructor["vit_kwargs_received"])
    cfg = constructor["cfg"]
    dim, patch = vit["embed_dim"], vit["patch_size"]
    hidden = int(dim * vit["mlp_ratio"])
    spec = {
        "base_model.cls_token": (1, 1, dim),
        "base_model.pos_embed": (1, (224 // patch) ** 2 + 1, dim),  # PatchEmbed(img_size=224)
        "base_model.temp_embed": (1, constructor["vit_num_frames"], 1, dim),
        "base_model.patch_embed.proj.weight": (dim, 3, patch, patch),
        "base_model.patch_embed.proj.bias": (dim,),
    }

    def block(p, qkv_bias):
        _norm(spec, f"{p}.norm1", dim)
        _linear(spec, f"{p}.attn.qkv", 3 * dim, dim, qkv_bias)
        _linear(spec, f"{p}.attn.proj", dim, dim)
        _norm(spec, f"{p}.norm2", dim)
        _linear(spec, f"{p}.mlp.fc1", hidden, dim)
        _linear(spec, f"{p}.mlp.fc2", dim, hidden)

    for index in range(vit["depth"]):
        block(f"base_model.blocks.{index}", vit["qkv_bias"])
    _norm(spec, "base_model.norm", dim)
    classes = cfg["MODEL.NUM_CLASSES"]
    _linear(spec, "new_fc", classes, dim)  # MODEL.DROPOUT_RATE > 0: base_model.head is Dropout
    spec["consensus.cls_token"] = (1, 1, dim)
    for index in range(cfg["TEMPORAL_HEAD.NUM_HIDDEN_LAYERS"]):
        block(f"consensus.temporal_encoder.{index}", qkv_bias=False)
    _norm(spec, "consensus.mlp_head.0", dim)
    _linear(spec, "consensus.mlp_head.1", cfg["TEMPORAL_HEAD.MLP_DIM"], dim)
    _linear(spec, "consensus.mlp_head.4", classes, cfg["TEMPORAL_HEAD.MLP_DIM"])
    return spec


def posmlp_spec(constructor: dict) -> dict:
    """zhouds1918/PosMLP_Video `PosMLP_Video(cfg)` (slowfast/models/posmlp.py)."""
    cfg = constructor["cfg"]
    video = cfg["POSMLP_VIDEO"]
    dims, frames = video["EMBED_DIMS"], cfg["WIN_SIZE_T"][0]
    spec = {}
    for name, out_c, in_c in (("1", dims[0] // 2, 3), ("2", dims[0], dims[0] // 2)):
        spec[f"patch_embed1.proj{name}.weight"] = (out_c, in_c, 1, 3, 3)
        spec[f"patch_embed1.proj{name}.bias"] = (out_c,)
        _norm(spec, f"patch_embed1.norm{name}", out_c, batch=True)

    def gate(p, dim, tokens, table_rows, gamma, index_shape):
        _norm(spec, f"{p}.norm", dim)
        _linear(spec, f"{p}.fc1", 2 * dim, dim)
        _linear(spec, f"{p}.fc2", dim, dim)
        spec[f"{p}.gate_unit.pos.token_proj_n_bias"] = (1, tokens, 1)
        spec[f"{p}.gate_unit.pos.window_relative_position_bias_table"] = (table_rows, gamma)
        spec[f"{p}.gate_unit.pos.window_relative_position_index"] = index_shape

    for stage, depth in enumerate(video["LAYERS"]):
        dim, window, gamma = dims[stage], cfg["WIN_SIZE"][stage], cfg["POSGAMMA"][stage]
        if stage > 0 and (video["TRANSITIONS"][stage - 1] or dims[stage - 1] != dim):
            spec[f"patch_embed{stage + 1}.proj.weight"] = (dim, dims[stage - 1], 1, 3, 3)
            spec[f"patch_embed{stage + 1}.proj.bias"] = (dim,)
            _norm(spec, f"patch_embed{stage + 1}.norm", dim)
        for index in range(depth):
            p = f"blocks{stage + 1}.{index}"
            tokens = window * window
            gate(f"{p}.fc.encoder", dim, tokens, (2 * window - 1) ** 2, gamma, (tokens, tokens))
            gate(f"{p}.t_fc.encoder", dim, frames, 2 * frames - 1, gamma, (frames, frames, 1))
    _norm(spec, "norm", dims[-1])
    _linear(spec, "head", cfg["MODEL"]["NUM_CLASSES"], dims[-1])
    return spec


SPECS = {
    "mobile_former": lambda c: mobile_former_spec(c["kwargs"]),
    "dualformer": dualformer_spec,
    "xvit": xvit_spec,
    "posmlp": posmlp_spec,
}


def state_dict_spec(reference: dict) -> dict:
    return SPECS[reference["family"]](reference["constructor"])


def parameter_count(spec: dict, exclude=()) -> int:
    return sum(
        math.prod(shape)
        for name, shape in spec.items()
        if not name.endswith(_BUFFER_SUFFIXES) and not name.startswith(tuple(exclude))
    )


def _relative_index(name, shape):
    """The reference's `window_relative_position_index` buffers (Swin's spatial index; dt + T-1)."""
    if len(shape) == 3:  # temporal (T, T, 1)
        t = np.arange(shape[0])
        return (t[:, None] - t[None, :] + shape[0] - 1)[..., None]
    w = math.isqrt(shape[0])
    coords = np.stack(np.meshgrid(np.arange(w), np.arange(w), indexing="ij")).reshape(2, -1)
    rel = coords[:, :, None] - coords[:, None, :] + w - 1
    return rel[0] * (2 * w - 1) + rel[1]


def random_state_dict(spec: dict, seed: int = 0) -> dict:
    """Random weights in the reference (PyTorch) layout: finite logits, no norm an identity."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in spec.items():
        if name.endswith("num_batches_tracked"):
            out[name] = np.zeros(shape, np.int64)
        elif name.endswith("_relative_position_index"):
            out[name] = _relative_index(name, shape).astype(np.int64)
        elif name.endswith("running_var"):
            out[name] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        elif len(shape) >= 2 and not name.endswith(("_token", "_embed", "table", "n_bias")):
            fan_in = math.prod(shape[1:])
            out[name] = (rng.standard_normal(shape, np.float32) / np.sqrt(fan_in)).astype(
                np.float32
            )
        elif name.endswith(".weight") and len(shape) == 1:
            out[name] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        else:
            out[name] = (0.1 * rng.standard_normal(shape, np.float32)).astype(np.float32)
    return out


# ------------------------------------------------------------------------------------------------
# The parameter counts the repositories and papers state (in parameters).
# ------------------------------------------------------------------------------------------------
# AAboys/MobileFormer README.md "Param" column (whole model, 1000 classes).
MOBILE_FORMER_STATED = {
    "mobile_former_508m_in1k": 14.0e6, "mobile_former_294m_in1k": 11.4e6,
    "mobile_former_214m_in1k": 9.4e6, "mobile_former_151m_in1k": 7.6e6,
    "mobile_former_96m_in1k": 4.6e6, "mobile_former_52m_in1k": 3.5e6,
    "mobile_former_26m_in1k": 3.2e6,
}  # fmt: skip
# sail-sg/dualformer README.md "Param (M)" column: the backbone (the K400 head is 0.2-0.4M).
DUALFORMER_STATED = {
    "dualformer_tiny_k400": 21.8e6, "dualformer_small_k400": 48.9e6,
    "dualformer_base_k400": 86.8e6,
}  # fmt: skip
# XViT-B/16: the ViT-Base backbone, 86M params (Dosovitskiy et al. 2021, Table 1), plus the
# temporal embedding; the VitHead adds one Transformer block and its MLP head (counted below).
XVIT_BACKBONE_STATED = 86e6
# PosMLP-Video S16: the repository states no count; 13.51M is the count of the reference code
# built from SSV1_MLP_S16.yaml (docs/design.md section 6).
POSMLP_STATED = {"posmlp_video_s16_ssv1": 13.51e6}
TOLERANCE = 0.02


def _stated(name: str, spec: dict) -> tuple[float, int]:
    """(stated params, the matching count of the reference state_dict)."""
    if name in MOBILE_FORMER_STATED:
        return MOBILE_FORMER_STATED[name], parameter_count(spec)
    if name in DUALFORMER_STATED:
        return DUALFORMER_STATED[name], parameter_count(spec, exclude=("cls_head",))
    if name in POSMLP_STATED:
        return POSMLP_STATED[name], parameter_count(spec)
    backbone = parameter_count(spec, exclude=("consensus", "new_fc", "base_model.temp_embed"))
    return XVIT_BACKBONE_STATED, backbone


ALL = kvid.models.list_reference_configs()
XVIT_CONFIGS = kvid.models.list_reference_configs("xvit")
GOLDEN_FAMILIES = ("mobile_former", "dualformer", "xvit", "posmlp")


# ------------------------------------------------------------------------------------------------
# Lookup
# ------------------------------------------------------------------------------------------------
def test_every_family_lists_its_released_configurations():
    assert kvid.models.list_reference_configs("mobile_former") == sorted(
        f"mobile_former_{size}_in1k" for size in ("26m", "52m", "96m", "151m", "214m", "294m",
                                                  "508m")
    )  # fmt: skip
    assert kvid.models.list_reference_configs("dualformer") == [
        "dualformer_base_k400", "dualformer_small_k400", "dualformer_tiny_k400"
    ]  # fmt: skip
    assert {"xvit_b16_k400", "xvit_b16_ssv2"} <= set(kvid.models.list_reference_configs("xvit"))
    assert kvid.models.list_reference_configs("posmlp") == ["posmlp_video_s16_ssv1"]
    assert sorted(ALL) == ALL and len(ALL) == len(set(ALL))


def test_reference_config_returns_a_copy_and_names_the_valid_ones():
    config = kvid.models.reference_config("mobile_former_508m_in1k")
    config["constructor"]["kwargs"]["block_args"].clear()
    again = kvid.models.reference_config("mobile_former_508m_in1k")
    assert len(again["constructor"]["kwargs"]["block_args"]) == 12
    with pytest.raises(ValueError, match="valid names: .*mobile_former_26m_in1k"):
        kvid.models.reference_config("mobile_former_26m")
    with pytest.raises(ValueError, match="valid families"):
        kvid.models.list_reference_configs("resnet")


@pytest.mark.parametrize("name", ALL)
def test_configuration_fields(name):
    config = kvid.models.reference_config(name)
    assert config["family"] in GOLDEN_FAMILIES
    assert json.loads(json.dumps(config)) == config  # plain data: it goes into model.json
    for key in ("mean", "std"):
        values = config["normalization"][key]
        assert len(values) == 3 and all(0 < v < 1 for v in values), (key, values)
    assert config["image_size"] == 224
    if config["family"] == "mobile_former":  # image checkpoints
        assert config["num_frames"] is None
    else:
        assert config["num_frames"] >= 8
    assert config["num_classes"] > 1
    assert set(config["checkpoint"]) == {"file", "url"}
    assert config["source"]["repo"].startswith("https://github.com/")


# ------------------------------------------------------------------------------------------------
# The derived state_dict layouts are the reference's: checked against the goldens' entries.
# ------------------------------------------------------------------------------------------------
def _golden_entries(meta: dict) -> dict:
    return {k: tuple(v["shape"]) for k, v in meta["state_dict_entries"].items()}


@pytest.mark.parametrize("family", GOLDEN_FAMILIES)
def test_state_dict_layout_matches_the_golden(golden_dir, family):
    meta = json.loads((golden_dir / f"{family}.json").read_text())
    spec = state_dict_spec({"family": family, "constructor": meta["constructor"]})
    assert spec == _golden_entries(meta)
    assert parameter_count(spec) == meta["parameter_count"]
    if family == "posmlp":  # the index buffers as the reference constructor computes them
        arrays = np.load(golden_dir / "posmlp.npz")
        for name, shape in spec.items():
            if name.endswith("_relative_position_index"):
                np.testing.assert_array_equal(_relative_index(name, shape), arrays[name])


GOLDEN_VARIANTS = sorted((REPO_ROOT / "tests" / "golden").glob("*.json"))


@pytest.mark.parametrize("path", GOLDEN_VARIANTS, ids=lambda p: p.stem)
def test_state_dict_layout_matches_the_golden_variants(path):
    meta = json.loads(path.read_text())
    arrays = np.load(path.with_suffix(".npz"))
    names = [k for k in arrays.files if k not in ("input_uint8", "logits")]
    names = [k for k in names if not k.startswith("feat__")]
    spec = state_dict_spec({"family": meta["family"], "constructor": meta["constructor"]})
    assert spec == {k: arrays[k].shape for k in names}


# ------------------------------------------------------------------------------------------------
# Parameter counts against the stated numbers
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_reference_parameter_count_matches_the_stated_number(name):
    reference = kvid.models.reference_config(name)
    stated, counted = _stated(name, state_dict_spec(reference))
    assert abs(counted - stated) <= TOLERANCE * stated, (counted, stated)


def test_configurations_differ_where_their_sources_do():
    k400 = kvid.models.reference_config("xvit_b16_k400")["constructor"]
    ssv2 = kvid.models.reference_config("xvit_b16_ssv2")["constructor"]
    assert (k400["cfg"]["XVIT.SHIFT_DIV"], ssv2["cfg"]["XVIT.SHIFT_DIV"]) == (8, 4)
    # the released Kinetics model: 16 frames, shift chunks of 8, a temporal embedding of 8
    fields = xvit_reference.reference_config(k400, None, (0.5,) * 3, (0.5,) * 3)
    assert fields["num_frames"] == 16
    assert (fields["num_segments"], fields["temporal_length"]) == (8, 8)
    assert fields["shift_blocks"] == tuple(range(12))
    fields = xvit_reference.reference_config(ssv2, None, (0.5,) * 3, (0.5,) * 3)
    assert (fields["num_segments"], fields["shift_div"]) == (16, 4)
    depths = {
        name: kvid.models.reference_config(name)["constructor"]["backbone_kwargs"]["depths"]
        for name in kvid.models.list_reference_configs("dualformer")
    }
    assert depths == {
        "dualformer_tiny_k400": [2, 2, 10, 4],
        "dualformer_small_k400": [2, 2, 18, 2],
        "dualformer_base_k400": [2, 2, 18, 2],
    }


@pytest.mark.parametrize("name", kvid.models.list_reference_configs("dualformer"))
def test_dualformer_layer_structure_without_building(name):
    """The kvid fields translated from each size, checked as `from_reference` checks them."""
    reference = kvid.models.reference_config(name)
    kwargs = dict(reference["constructor"]["backbone_kwargs"])
    kwargs.pop("num_classes")
    norm = reference["normalization"]
    cfg = dualformer_reference.reference_config(kwargs, None, None, norm["mean"], norm["std"])
    cfg = dict(kvid.models.dualformer.DEFAULTS, **cfg)
    dualformer_check_config(name, cfg, exact_pyramids=False)
    assert cfg["depths"] == tuple(kwargs["depths"])
    assert cfg["num_heads"] == tuple(kwargs["num_heads"])
    assert {d // h for d, h in zip(cfg["embed_dims"], cfg["num_heads"], strict=True)} == {32}
    assert cfg["coarse_pyramid_sizes"][2:] == (None, None)  # GPAttention: stages 0-1 only


# ------------------------------------------------------------------------------------------------
# Building: random weights in the reference layout, every tensor consumed.
# ------------------------------------------------------------------------------------------------
def _build(name: str, **sizes):
    reference = kvid.models.reference_config(name)
    spec = state_dict_spec(reference)
    norm = reference["normalization"]
    model = kvid.models.from_reference(
        reference,
        random_state_dict(spec),
        input_mean=norm["mean"],
        input_std=norm["std"],
        **sizes,
    )
    return reference, spec, model


def _check_params(name, spec, model):
    # kvid holds every reference parameter once, except XViT's `new_fc`, which the `vit`
    # consensus never uses (consumed, not loaded)
    unused = ("new_fc",) if name in XVIT_CONFIGS else ()
    counted = kvid.profile.count_params(model)
    assert counted == parameter_count(spec, exclude=unused)
    if name in DUALFORMER_STATED:  # the stated number is the backbone's
        logits = model.get_layer("logits")
        counted -= math.prod(logits.kernel.shape) + math.prod(logits.bias.shape)
    elif name in XVIT_CONFIGS:  # the ViT-B backbone's (no temporal embedding, no head)
        counted = parameter_count(spec, exclude=("consensus", "new_fc", "base_model.temp_embed"))
    stated, _ = _stated(name, spec)
    assert abs(counted - stated) <= TOLERANCE * stated, (counted, stated)


SMALL_MOBILE_FORMER = ["mobile_former_26m_in1k"]


@pytest.mark.parametrize("name", SMALL_MOBILE_FORMER)
def test_mobile_former_builds_at_a_small_size(name):
    """The smallest checkpoint at 64x64 (the convolutions take any size; all at 224: slow)."""
    reference, spec, model = _build(name, image_size=64)
    _check_params(name, spec, model)
    x = np.random.default_rng(1).random((1, 64, 64, 3), np.float32)
    logits = model(x, training=False).numpy()
    assert logits.shape == (1, reference["num_classes"]) and np.isfinite(logits).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", kvid.models.list_reference_configs("mobile_former"))
def test_mobile_former_builds_at_the_checkpoint_size(name):
    reference, spec, model = _build(name)
    _check_params(name, spec, model)
    x = np.random.default_rng(1).random((1, 224, 224, 3), np.float32)
    assert np.isfinite(model(x, training=False).numpy()).all()


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    kvid.models.list_reference_configs("dualformer")
    + XVIT_CONFIGS
    + kvid.models.list_reference_configs("posmlp"),
)
def test_video_configuration_builds_at_the_checkpoint_size(name):
    """These take only the checkpoint's input (DualFormer's pyramid kernels come from it, XViT's
    position table is 224's, PosMLP's windows tile 224 and its temporal gate spans 16 frames)."""
    reference, spec, model = _build(name)
    _check_params(name, spec, model)
    assert model.input_shape == (None, reference["num_frames"], 224, 224, 3)
    assert model.output_shape == (None, reference["num_classes"])


@pytest.mark.slow
def test_posmlp_released_configuration_runs():
    reference, _, model = _build("posmlp_video_s16_ssv1")
    x = np.random.default_rng(1).random((1, 16, 224, 224, 3), np.float32)
    logits = model(x, training=False).numpy()
    assert logits.shape == (1, 174) and np.isfinite(logits).all()


@pytest.mark.parametrize("family", GOLDEN_FAMILIES)
def test_family_doc_lists_the_released_configurations(family):
    text = (REPO_ROOT / "docs" / f"{family}.md").read_text()
    section = text.split("## Released checkpoints", 1)[1].split("\n## ", 1)[0]
    names = set(re.findall(r"^\| `(\w+)` \|", section, flags=re.MULTILINE))
    if family == "posmlp":  # one configuration: named in the text, not in a table
        names = set(re.findall(r"`(posmlp_video_\w+)`", section))
    assert names == set(kvid.models.list_reference_configs(family))


@pytest.mark.slow
def test_released_mobile_former_inflates_to_video():
    """A released configuration with its normalization, inflated: a still clip gives the image
    model's logits (tests/kvid/models/mobile_former/test_inflate.py has the details)."""
    from kvid.models.mobile_former.inflate import inflate_from_reference

    reference, spec, image = _build("mobile_former_151m_in1k", image_size=96)
    norm = reference["normalization"]
    video = inflate_from_reference(
        reference, random_state_dict(spec), 4, 96, norm["mean"], norm["std"], time_halved_at=3
    )
    x = np.random.default_rng(1).random((2, 96, 96, 3), np.float32)
    expected = image(x, training=False).numpy()
    logits = video(np.repeat(x[:, None], 4, axis=1), training=False).numpy()
    assert np.abs(logits - expected).max() <= 2e-5 * max(1.0, np.abs(expected).max())
