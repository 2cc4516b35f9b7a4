"""Operators a TorchScript archive may call without ``--trust-code``: pure tensor and list math.

An allowlist, not a denylist: an operator is here only if it computes from its inputs and
touches nothing else (no files, processes, printing, RNG state outside tensors is fine).
Anything else — ``aten::from_file``, ``aten::save``, ``prim::Print``, operators of custom
namespaces, custom classes — is refused by :mod:`.codecheck` unless the user trusts the file.
Names are what ``torch.jit.save`` prints: ``torch.NAME`` for ``aten::NAME`` and TorchScript
builtins, ``ops.prim.NAME`` for ``prim::NAME``.
"""

from __future__ import annotations

_ATEN = """
abs abs_ absolute acos acosh adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d adaptive_max_pool1d
adaptive_max_pool2d adaptive_max_pool3d add add_ addbmm addcdiv addcmul addmm addmv addr affine_grid_generator
alias alias_copy all allclose alpha_dropout alpha_dropout_ amax amin aminmax angle any arange arccos argmax argmin argsort
as_strided asin asinh atan atan2 atanh avg_pool1d avg_pool2d avg_pool3d baddbmm batch_norm bernoulli bernoulli_
bilinear binary_cross_entropy bitwise_and bitwise_not bitwise_or bitwise_xor bmm broadcast_tensors broadcast_to
bucketize cat ceil ceil_ celu celu_ channel_shuffle chunk clamp clamp_ clamp_max clamp_min clip clone
constant_pad_nd contiguous conv1d conv2d conv3d conv_tbc conv_transpose1d conv_transpose2d conv_transpose3d
convolution _convolution copy_ cos cosh cosine_similarity count_nonzero cross cumprod cumsum deg2rad
detach diag diag_embed diagonal diff dim dist div div_ dot dropout dropout_ einsum elu elu_ embedding
embedding_bag empty empty_like eq equal erf erfc erfinv exp exp2 expand expand_as expm1 eye feature_alpha_dropout
feature_dropout fill_ fix flatten flip fliplr flipud float_power floor floor_ floor_divide fmax fmin fmod frac
full full_like gather gcd ge gelu gelu_ glu grid_sampler group_norm gru gru_cell gt hardshrink hardsigmoid hardsigmoid_
hardswish hardswish_ hardtanh hardtanh_ heaviside hstack hypot im2col col2im index index_add index_copy index_fill
index_put index_put_ index_select instance_norm is_complex is_floating_point is_nonzero is_same_size isclose
isfinite isinf isnan item kthvalue l1_loss layer_norm lcm le leaky_relu leaky_relu_ lerp lgamma linear linspace
log log10 log1p log2 log_sigmoid log_softmax logaddexp logcumsumexp logical_and logical_not logical_or logical_xor
logit logsumexp lstm lstm_cell lt masked_fill masked_fill_ masked_scatter masked_select matmul max max_pool1d
max_pool2d max_pool3d max_pool1d_with_indices max_pool2d_with_indices max_pool3d_with_indices max_unpool2d maximum
mean median meshgrid min minimum mish mish_ mm mode movedim moveaxis mse_loss mul mul_ multinomial mv mvlv
nan_to_num nanmean nanmedian nansum narrow native_layer_norm native_batch_norm ne neg neg_ new_empty new_full
new_ones new_zeros nll_loss nonzero norm normal normal_ numel ones ones_like outer pad pairwise_distance pdist
permute pixel_shuffle pixel_unshuffle pow pow_ prelu prod quantile rad2deg rand rand_like randint randint_like
randn randn_like randperm reciprocal reflection_pad1d reflection_pad2d reflection_pad3d relu relu6 relu_ remainder
renorm repeat repeat_interleave replication_pad1d replication_pad2d replication_pad3d reshape reshape_as
resolve_conj resolve_neg rnn_relu rnn_tanh roll rot90 round rrelu rrelu_ rsqrt rsub scalar_tensor scaled_dot_product_attention
_native_multi_head_attention scatter scatter_ scatter_add scatter_add_ scatter_reduce searchsorted select selu
selu_ sgn sigmoid sigmoid_ sign signbit silu silu_ sin sinc sinh size slice smooth_l1_loss softmax softplus
softshrink sort split split_with_sizes sqrt square squeeze stack std std_mean sub sub_ sum swapaxes swapdims t
take tan tanh tanh_ tensor tensor_split tensordot threshold threshold_ tile to topk trace transpose trapz tril
triu true_divide trunc type_as unbind unflatten unfold uniform_ unique_consecutive unsqueeze upsample_bicubic2d
upsample_bilinear2d upsample_linear1d upsample_nearest1d upsample_nearest2d upsample_nearest3d upsample_trilinear3d
var var_mean view view_as vstack where xlogy zero_ zeros zeros_like _unsafe_view _reshape_alias _to_copy
__and__ __or__ __xor__ __lshift__ __rshift__ __contains__ __getitem__ __is__ __isnot__ __not__ __range_length
__derive_index __round_to_zero_floordiv floordiv append extend insert pop clear len list keys values items
get setdefault format warn is_grad_enabled is_autocast_enabled is_autocast_cpu_enabled str join split_str
lower upper strip startswith endswith replace find isdigit isalpha isspace slice_str copy sorted reverse count
index_str dict _set_item _get_item Bool Float Int ScalarImplicit FloatImplicit IntImplicit ComplexImplicit
sqrt_ exp_ log_ div_floor mul_tensor requires_grad_ ceil_divide device dtype layout is_cuda is_mps is_cpu
is_sparse is_quantized is_meta is_nested stride storage_offset numpy_T mT mH H T real imag conj
complex polar view_as_real view_as_complex fft_fft fft_ifft fft_rfft fft_irfft fft_fft2 fft_rfft2 fft_irfft2
linalg_norm linalg_vector_norm linalg_matrix_norm frobenius_norm nuclear_norm renorm_ cdist cosine_embedding_loss
one_hot argwhere histc bincount cummax cummin logdet det inverse linalg_inv linalg_solve pinverse svd qr cholesky
slogdet matrix_power kron block_diag cartesian_prod combinations triu_indices tril_indices full_like_ group_norm_
_assert_async _assert_tensor_metadata sym_size sym_numel sym_stride _shape_as_tensor _size_if_not_equal
_nested_tensor_from_mask _nested_tensor_from_mask_left_aligned _transformer_encoder_layer_fwd to_padded_tensor
_native_multi_head_attention _masked_softmax _transform_bias_rescale_qkv _triton_multi_head_attention
dequantize quantize_per_tensor int_repr fake_quantize_per_tensor_affine fake_quantize_per_channel_affine
"""

_PRIM = """
RaiseException NumToTensor device dtype is_nested requires_grad type layout unchecked_cast Uninitialized
TupleConstruct TupleUnpack ListConstruct ListUnpack DictConstruct isinstance min max abs is_cuda is_cpu is_xpu
is_mps is_meta is_sparse is_quantized is_mkldnn is_vulkan name data grad shape index tolist AutogradZero
AutogradAnyNonZero AutogradAdd rangelist unchecked_unwrap_optional BroadcastSizes ConstantChunk
"""

ALLOWED_OPS: frozenset[str] = frozenset(
    [f"aten::{n}" for n in _ATEN.split()] + [f"prim::{n}" for n in _PRIM.split()]
)

# ``torch.NAME`` that TorchScript maps to builtins rather than aten operators
ALLOWED_TORCH_NAMES: frozenset[str] = frozenset("""
__is__ __isnot__ __not__ __and__ __or__ __contains__ len dim size format warn append extend insert pop
clear keys values items get copy list sorted floordiv __range_length __derive_index device dtype numel
""".split()) | frozenset("""
forward __getstate__ __setstate__ __len__ __getitem__ __contains__ __iter__ __next__ tolist item float int
""".split())

# bare calls of TorchScript's Python subset
ALLOWED_BUILTINS: frozenset[str] = frozenset("""
range len int float bool str complex tuple list dict isinstance unchecked_cast annotate uninitialized
getattr hasattr enumerate zip min max abs round divmod ord chr all any sum sorted reversed hash id
""".split())

DENIED_EXPLAINED: dict[str, str] = {
    "aten::from_file": "reads a file",
    "aten::save": "writes a file",
    "aten::_save": "writes a file",
    "aten::load": "reads a file",
    "prim::Print (print)": "prints on stdout",
    "prim::Print": "prints on stdout",
}
