"""The subset of Caffe's ``caffe.proto`` (proto2, package ``caffe``) this plug-in reads and writes.

Built at import time from Python tables with ``descriptor_pb2`` + ``message_factory``: no
protoc, no generated ``caffe_pb2.py`` (those break on protobuf >= 4). Field numbers are
BVLC's, so the binary ``.caffemodel`` written with these messages is what Caffe and OpenCV
read. Parameters of layers the tool never executes (data sources, losses, ...) are declared
as *opaque* messages whose contents the text reader skips; ``LENIENT`` lists the messages
whose unknown fields are skipped rather than reported.
"""

from __future__ import annotations

from types import SimpleNamespace

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "caffe"

_SCALARS = {
    "double": descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE,
    "float": descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT,
    "int64": descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
    "uint64": descriptor_pb2.FieldDescriptorProto.TYPE_UINT64,
    "int32": descriptor_pb2.FieldDescriptorProto.TYPE_INT32,
    "uint32": descriptor_pb2.FieldDescriptorProto.TYPE_UINT32,
    "bool": descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
    "string": descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
    "bytes": descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
}

# Enums: name -> [(value name, number)]. Names with a dot are nested in a message.
ENUMS: dict[str, list[tuple[str, int]]] = {
    "Phase": [("TRAIN", 0), ("TEST", 1)],
    "FillerParameter.VarianceNorm": [("FAN_IN", 0), ("FAN_OUT", 1), ("AVERAGE", 2)],
    "ParamSpec.DimCheckMode": [("STRICT", 0), ("PERMISSIVE", 1)],
    "ConvolutionParameter.Engine": [("DEFAULT", 0), ("CAFFE", 1), ("CUDNN", 2)],
    "PoolingParameter.PoolMethod": [("MAX", 0), ("AVE", 1), ("STOCHASTIC", 2)],
    "PoolingParameter.Engine": [("DEFAULT", 0), ("CAFFE", 1), ("CUDNN", 2)],
    "PoolingParameter.RoundMode": [("CEIL", 0), ("FLOOR", 1)],
    "ReLUParameter.Engine": [("DEFAULT", 0), ("CAFFE", 1), ("CUDNN", 2)],
    "TanHParameter.Engine": [("DEFAULT", 0), ("CAFFE", 1), ("CUDNN", 2)],
    "SigmoidParameter.Engine": [("DEFAULT", 0), ("CAFFE", 1), ("CUDNN", 2)],
    "SoftmaxParameter.Engine": [("DEFAULT", 0), ("CAFFE", 1), ("CUDNN", 2)],
    "LRNParameter.NormRegion": [("ACROSS_CHANNELS", 0), ("WITHIN_CHANNEL", 1)],
    "LRNParameter.Engine": [("DEFAULT", 0), ("CAFFE", 1), ("CUDNN", 2)],
    "EltwiseParameter.EltwiseOp": [("PROD", 0), ("SUM", 1), ("MAX", 2)],
    "ReductionParameter.ReductionOp": [("SUM", 1), ("ASUM", 2), ("SUMSQ", 3), ("MEAN", 4)],
    "SPPParameter.PoolMethod": [("MAX", 0), ("AVE", 1), ("STOCHASTIC", 2)],
    "SPPParameter.Engine": [("DEFAULT", 0), ("CAFFE", 1), ("CUDNN", 2)],
    "BNParameter.BNMode": [("LEARN", 0), ("INFERENCE", 1)],
    "BNParameter.Engine": [("DEFAULT", 0), ("CAFFE", 1), ("CUDNN", 2)],
    "PriorBoxParameter.CodeType": [("CORNER", 1), ("CENTER_SIZE", 2), ("CORNER_SIZE", 3)],
    "V1LayerParameter.LayerType": [
        ("NONE", 0), ("ABSVAL", 35), ("ACCURACY", 1), ("ARGMAX", 30), ("BNLL", 2), ("CONCAT", 3),
        ("CONTRASTIVE_LOSS", 37), ("CONVOLUTION", 4), ("DATA", 5), ("DECONVOLUTION", 39), ("DROPOUT", 6),
        ("DUMMY_DATA", 32), ("EUCLIDEAN_LOSS", 7), ("ELTWISE", 25), ("EXP", 38), ("FLATTEN", 8),
        ("HDF5_DATA", 9), ("HDF5_OUTPUT", 10), ("HINGE_LOSS", 28), ("IM2COL", 11), ("IMAGE_DATA", 12),
        ("INFOGAIN_LOSS", 13), ("INNER_PRODUCT", 14), ("LRN", 15), ("MEMORY_DATA", 29),
        ("MULTINOMIAL_LOGISTIC_LOSS", 16), ("MVN", 34), ("POOLING", 17), ("POWER", 26), ("RELU", 18),
        ("SIGMOID", 19), ("SIGMOID_CROSS_ENTROPY_LOSS", 27), ("SILENCE", 36), ("SOFTMAX", 20),
        ("SOFTMAX_LOSS", 21), ("SPLIT", 22), ("SLICE", 33), ("TANH", 23), ("WINDOW_DATA", 24),
        ("THRESHOLD", 31), ("BN", 43),
    ],
    "V1LayerParameter.DimCheckMode": [("STRICT", 0), ("PERMISSIVE", 1)],
}

# Messages: name -> [(field, number, label, type, default)]; label "?" optional, "*" repeated,
# "*p" repeated packed. Types are scalar names, message names or enum names (as in ENUMS).
_O = "Opaque"
MESSAGES: dict[str, list[tuple]] = {
    "Opaque": [],
    "BlobShape": [("dim", 1, "*p", "int64", None)],
    "BlobProto": [
        ("shape", 7, "?", "BlobShape", None), ("data", 5, "*p", "float", None), ("diff", 6, "*p", "float", None),
        ("double_data", 8, "*p", "double", None), ("double_diff", 9, "*p", "double", None),
        ("num", 1, "?", "int32", None), ("channels", 2, "?", "int32", None), ("height", 3, "?", "int32", None),
        ("width", 4, "?", "int32", None),
    ],
    "FillerParameter": [
        ("type", 1, "?", "string", "constant"), ("value", 2, "?", "float", None), ("min", 3, "?", "float", None),
        ("max", 4, "?", "float", "1"), ("mean", 5, "?", "float", None), ("std", 6, "?", "float", "1"),
        ("sparse", 7, "?", "int32", "-1"), ("variance_norm", 8, "?", "FillerParameter.VarianceNorm", "FAN_IN"),
    ],
    "NetState": [("phase", 1, "?", "Phase", "TEST"), ("level", 2, "?", "int32", None), ("stage", 3, "*", "string", None)],
    "NetStateRule": [
        ("phase", 1, "?", "Phase", None), ("min_level", 2, "?", "int32", None), ("max_level", 3, "?", "int32", None),
        ("stage", 4, "*", "string", None), ("not_stage", 5, "*", "string", None),
    ],
    "ParamSpec": [
        ("name", 1, "?", "string", None), ("share_mode", 2, "?", "ParamSpec.DimCheckMode", None),
        ("lr_mult", 3, "?", "float", "1"), ("decay_mult", 4, "?", "float", "1"),
    ],
    "NetParameter": [
        ("name", 1, "?", "string", None), ("input", 3, "*", "string", None),
        ("input_shape", 8, "*", "BlobShape", None), ("input_dim", 4, "*", "int32", None),
        ("force_backward", 5, "?", "bool", None), ("state", 6, "?", "NetState", None),
        ("debug_info", 7, "?", "bool", None), ("layer", 100, "*", "LayerParameter", None),
        ("layers", 2, "*", "V1LayerParameter", None),
    ],
    "SolverParameter": [
        ("net", 24, "?", "string", None), ("net_param", 25, "?", "NetParameter", None),
        ("train_net", 1, "?", "string", None), ("test_net", 2, "*", "string", None),
        ("train_net_param", 21, "?", "NetParameter", None), ("test_net_param", 22, "*", "NetParameter", None),
        ("train_state", 26, "?", "NetState", None), ("test_state", 27, "*", "NetState", None),
    ],
    "TransformationParameter": [
        ("scale", 1, "?", "float", "1"), ("mirror", 2, "?", "bool", None), ("crop_size", 3, "?", "uint32", None),
        ("mean_file", 4, "?", "string", None), ("mean_value", 5, "*", "float", None),
        ("force_color", 6, "?", "bool", None), ("force_gray", 7, "?", "bool", None),
    ],
    "ImageDataParameter": [
        ("crop_size", 5, "?", "uint32", None), ("new_height", 9, "?", "uint32", None),
        ("new_width", 10, "?", "uint32", None), ("is_color", 11, "?", "bool", "true"),
    ],
    "MemoryDataParameter": [
        ("batch_size", 1, "?", "uint32", None), ("channels", 2, "?", "uint32", None),
        ("height", 3, "?", "uint32", None), ("width", 4, "?", "uint32", None),
    ],
    "DummyDataParameter": [
        ("data_filler", 1, "*", "FillerParameter", None), ("shape", 6, "*", "BlobShape", None),
        ("num", 2, "*", "uint32", None), ("channels", 3, "*", "uint32", None),
        ("height", 4, "*", "uint32", None), ("width", 5, "*", "uint32", None),
    ],
    "InputParameter": [("shape", 1, "*", "BlobShape", None)],
    "ConvolutionParameter": [
        ("num_output", 1, "?", "uint32", None), ("bias_term", 2, "?", "bool", "true"),
        ("pad", 3, "*", "uint32", None), ("kernel_size", 4, "*", "uint32", None), ("stride", 6, "*", "uint32", None),
        ("dilation", 18, "*", "uint32", None), ("pad_h", 9, "?", "uint32", None), ("pad_w", 10, "?", "uint32", None),
        ("kernel_h", 11, "?", "uint32", None), ("kernel_w", 12, "?", "uint32", None),
        ("stride_h", 13, "?", "uint32", None), ("stride_w", 14, "?", "uint32", None),
        ("group", 5, "?", "uint32", "1"), ("weight_filler", 7, "?", "FillerParameter", None),
        ("bias_filler", 8, "?", "FillerParameter", None), ("engine", 15, "?", "ConvolutionParameter.Engine", None),
        ("axis", 16, "?", "int32", "1"), ("force_nd_im2col", 17, "?", "bool", None),
    ],
    "InnerProductParameter": [
        ("num_output", 1, "?", "uint32", None), ("bias_term", 2, "?", "bool", "true"),
        ("weight_filler", 3, "?", "FillerParameter", None), ("bias_filler", 4, "?", "FillerParameter", None),
        ("axis", 5, "?", "int32", "1"), ("transpose", 6, "?", "bool", None),
    ],
    "PoolingParameter": [
        ("pool", 1, "?", "PoolingParameter.PoolMethod", "MAX"), ("pad", 4, "?", "uint32", None),
        ("pad_h", 9, "?", "uint32", None), ("pad_w", 10, "?", "uint32", None),
        ("kernel_size", 2, "?", "uint32", None), ("kernel_h", 5, "?", "uint32", None),
        ("kernel_w", 6, "?", "uint32", None), ("stride", 3, "?", "uint32", "1"),
        ("stride_h", 7, "?", "uint32", None), ("stride_w", 8, "?", "uint32", None),
        ("engine", 11, "?", "PoolingParameter.Engine", None), ("global_pooling", 12, "?", "bool", None),
        ("round_mode", 13, "?", "PoolingParameter.RoundMode", "CEIL"),
        # OpenCV's (and several forks') spelling of field 13; only ever read from text here.
        ("ceil_mode", 1013, "?", "bool", "true"),
    ],
    "DropoutParameter": [("dropout_ratio", 1, "?", "float", "0.5"), ("scale_train", 2, "?", "bool", "true")],
    "ReLUParameter": [("negative_slope", 1, "?", "float", None), ("engine", 2, "?", "ReLUParameter.Engine", None)],
    "PReLUParameter": [("filler", 1, "?", "FillerParameter", None), ("channel_shared", 2, "?", "bool", None)],
    "ELUParameter": [("alpha", 1, "?", "float", "1")],
    "TanHParameter": [("engine", 1, "?", "TanHParameter.Engine", None)],
    "SigmoidParameter": [("engine", 1, "?", "SigmoidParameter.Engine", None)],
    "PowerParameter": [("power", 1, "?", "float", "1"), ("scale", 2, "?", "float", "1"), ("shift", 3, "?", "float", None)],
    "LRNParameter": [
        ("local_size", 1, "?", "uint32", "5"), ("alpha", 2, "?", "float", "1"), ("beta", 3, "?", "float", "0.75"),
        ("norm_region", 4, "?", "LRNParameter.NormRegion", "ACROSS_CHANNELS"), ("k", 5, "?", "float", "1"),
        ("engine", 6, "?", "LRNParameter.Engine", None),
    ],
    "ConcatParameter": [("axis", 2, "?", "int32", "1"), ("concat_dim", 1, "?", "uint32", "1")],
    "EltwiseParameter": [
        ("operation", 1, "?", "EltwiseParameter.EltwiseOp", "SUM"), ("coeff", 2, "*", "float", None),
        ("stable_prod_grad", 3, "?", "bool", "true"),
    ],
    "SliceParameter": [("axis", 3, "?", "int32", "1"), ("slice_point", 2, "*", "uint32", None),
                       ("slice_dim", 1, "?", "uint32", "1")],
    "FlattenParameter": [("axis", 1, "?", "int32", "1"), ("end_axis", 2, "?", "int32", "-1")],
    "ReshapeParameter": [("shape", 1, "?", "BlobShape", None), ("axis", 2, "?", "int32", None),
                         ("num_axes", 3, "?", "int32", "-1")],
    "BatchNormParameter": [
        ("use_global_stats", 1, "?", "bool", None), ("moving_average_fraction", 2, "?", "float", "0.999"),
        ("eps", 3, "?", "float", "1e-5"),
    ],
    "ScaleParameter": [
        ("axis", 1, "?", "int32", "1"), ("num_axes", 2, "?", "int32", "1"), ("filler", 3, "?", "FillerParameter", None),
        ("bias_term", 4, "?", "bool", None), ("bias_filler", 5, "?", "FillerParameter", None),
    ],
    "BiasParameter": [("axis", 1, "?", "int32", "1"), ("num_axes", 2, "?", "int32", "1"),
                      ("filler", 3, "?", "FillerParameter", None)],
    "SoftmaxParameter": [("engine", 1, "?", "SoftmaxParameter.Engine", None), ("axis", 2, "?", "int32", "1")],
    # -- BVLC layers added after the first release of this plug-in (BVLC caffe.proto numbers) --
    "ArgMaxParameter": [("out_max_val", 1, "?", "bool", None), ("top_k", 2, "?", "uint32", "1"),
                        ("axis", 3, "?", "int32", None)],
    "ClipParameter": [("min", 1, "?", "float", None), ("max", 2, "?", "float", None)],
    "CropParameter": [("axis", 1, "?", "int32", "2"), ("offset", 2, "*", "uint32", None)],
    "EmbedParameter": [
        ("num_output", 1, "?", "uint32", None), ("input_dim", 2, "?", "uint32", None),
        ("bias_term", 3, "?", "bool", "true"), ("weight_filler", 4, "?", "FillerParameter", None),
        ("bias_filler", 5, "?", "FillerParameter", None),
    ],
    "ExpParameter": [("base", 1, "?", "float", "-1"), ("scale", 2, "?", "float", "1"), ("shift", 3, "?", "float", None)],
    "LogParameter": [("base", 1, "?", "float", "-1"), ("scale", 2, "?", "float", "1"), ("shift", 3, "?", "float", None)],
    "MVNParameter": [("normalize_variance", 1, "?", "bool", "true"), ("across_channels", 2, "?", "bool", None),
                     ("eps", 3, "?", "float", "1e-9")],
    "ParameterParameter": [("shape", 1, "?", "BlobShape", None)],
    "RecurrentParameter": [
        ("num_output", 1, "?", "uint32", None), ("weight_filler", 2, "?", "FillerParameter", None),
        ("bias_filler", 3, "?", "FillerParameter", None), ("debug_info", 4, "?", "bool", None),
        ("expose_hidden", 5, "?", "bool", None),
    ],
    "ReductionParameter": [("operation", 1, "?", "ReductionParameter.ReductionOp", "SUM"),
                           ("axis", 2, "?", "int32", None), ("coeff", 3, "?", "float", "1")],
    "SPPParameter": [("pyramid_height", 1, "?", "uint32", None), ("pool", 2, "?", "SPPParameter.PoolMethod", "MAX"),
                     ("engine", 6, "?", "SPPParameter.Engine", None)],
    "SwishParameter": [("beta", 1, "?", "float", "1")],
    "ThresholdParameter": [("threshold", 1, "?", "float", None)],
    "TileParameter": [("axis", 1, "?", "int32", "1"), ("tiles", 2, "?", "int32", None)],
    # -- fork layers (field numbers of each fork's caffe.proto) --
    # weiliu89/caffe (SSD)
    "PermuteParameter": [("order", 1, "*", "uint32", None)],
    "NormalizeParameter": [("across_spatial", 1, "?", "bool", "true"), ("scale_filler", 2, "?", "FillerParameter", None),
                           ("channel_shared", 3, "?", "bool", "true"), ("eps", 4, "?", "float", "1e-10")],
    "PriorBoxParameter": [
        ("min_size", 1, "*", "float", None), ("max_size", 2, "*", "float", None),
        ("aspect_ratio", 3, "*", "float", None), ("flip", 4, "?", "bool", "true"), ("clip", 5, "?", "bool", None),
        ("variance", 6, "*", "float", None), ("img_size", 7, "?", "uint32", None), ("img_h", 8, "?", "uint32", None),
        ("img_w", 9, "?", "uint32", None), ("step", 10, "?", "float", None), ("step_h", 11, "?", "float", None),
        ("step_w", 12, "?", "float", None), ("offset", 13, "?", "float", "0.5"),
    ],
    "NonMaximumSuppressionParameter": [("nms_threshold", 1, "?", "float", "0.3"), ("top_k", 2, "?", "int32", None),
                                       ("eta", 3, "?", "float", "1")],
    "DetectionOutputParameter": [
        ("num_classes", 1, "?", "uint32", None), ("share_location", 2, "?", "bool", "true"),
        ("background_label_id", 3, "?", "int32", None), ("nms_param", 4, "?", "NonMaximumSuppressionParameter", None),
        ("save_output_param", 5, "?", _O, None), ("code_type", 6, "?", "PriorBoxParameter.CodeType", "CORNER"),
        ("variance_encoded_in_target", 8, "?", "bool", None), ("keep_top_k", 7, "?", "int32", "-1"),
        ("confidence_threshold", 9, "?", "float", None), ("visualize", 10, "?", "bool", None),
        ("visualize_threshold", 11, "?", "float", None), ("save_file", 12, "?", "string", None),
    ],
    # farmingyard/ShuffleNet
    "ShuffleChannelParameter": [("group", 1, "?", "uint32", "1")],
    # alexgkendall/caffe-segnet, TimoSaemann/caffe-enet (scale form: the YOLOv3 forks' nearest upsampling)
    "UpsampleParameter": [
        ("scale", 1, "?", "uint32", "2"), ("scale_h", 2, "?", "uint32", None), ("scale_w", 3, "?", "uint32", None),
        ("pad_out_h", 4, "?", "bool", None), ("pad_out_w", 5, "?", "bool", None),
        ("upsample_h", 6, "?", "uint32", None), ("upsample_w", 7, "?", "uint32", None),
    ],
    # SegNet / ENet BN: scale_filler 1, shift_filler 2, bn_mode 3. The slope_filler / bias_filler /
    # momentum / eps / frozen spelling of other BN forks (same layer, numbers 1..5 there) is read
    # from text under free numbers: protobuf can't give two names one number.
    "BNParameter": [
        ("scale_filler", 1, "?", "FillerParameter", None), ("shift_filler", 2, "?", "FillerParameter", None),
        ("bn_mode", 3, "?", "BNParameter.BNMode", "LEARN"),
        ("slope_filler", 1001, "?", "FillerParameter", None), ("bias_filler", 1002, "?", "FillerParameter", None),
        ("momentum", 1003, "?", "float", "0.9"), ("eps", 1004, "?", "float", "1e-5"),
        ("frozen", 1005, "?", "bool", None), ("engine", 1006, "?", "BNParameter.Engine", None),
    ],
    # DeepLab v2 / PSPNet
    "InterpParameter": [
        ("height", 1, "?", "int32", None), ("width", 2, "?", "int32", None), ("zoom_factor", 3, "?", "int32", "1"),
        ("shrink_factor", 4, "?", "int32", "1"), ("pad_beg", 5, "?", "int32", None), ("pad_end", 6, "?", "int32", None),
    ],
    "LayerParameter": [
        ("name", 1, "?", "string", None), ("type", 2, "?", "string", None), ("bottom", 3, "*", "string", None),
        ("top", 4, "*", "string", None), ("phase", 10, "?", "Phase", None), ("loss_weight", 5, "*", "float", None),
        ("param", 6, "*", "ParamSpec", None), ("blobs", 7, "*", "BlobProto", None),
        ("propagate_down", 11, "*", "bool", None), ("include", 8, "*", "NetStateRule", None),
        ("exclude", 9, "*", "NetStateRule", None),
        ("transform_param", 100, "?", "TransformationParameter", None), ("loss_param", 101, "?", _O, None),
        ("accuracy_param", 102, "?", _O, None), ("argmax_param", 103, "?", "ArgMaxParameter", None),
        ("batch_norm_param", 139, "?", "BatchNormParameter", None), ("bias_param", 141, "?", "BiasParameter", None),
        ("concat_param", 104, "?", "ConcatParameter", None), ("contrastive_loss_param", 105, "?", _O, None),
        ("convolution_param", 106, "?", "ConvolutionParameter", None), ("crop_param", 144, "?", "CropParameter", None),
        ("data_param", 107, "?", _O, None), ("dropout_param", 108, "?", "DropoutParameter", None),
        ("dummy_data_param", 109, "?", "DummyDataParameter", None),
        ("eltwise_param", 110, "?", "EltwiseParameter", None), ("elu_param", 140, "?", "ELUParameter", None),
        ("embed_param", 137, "?", "EmbedParameter", None), ("exp_param", 111, "?", "ExpParameter", None),
        ("flatten_param", 135, "?", "FlattenParameter", None), ("hdf5_data_param", 112, "?", _O, None),
        ("hdf5_output_param", 113, "?", _O, None), ("hinge_loss_param", 114, "?", _O, None),
        ("image_data_param", 115, "?", "ImageDataParameter", None), ("infogain_loss_param", 116, "?", _O, None),
        ("inner_product_param", 117, "?", "InnerProductParameter", None),
        ("input_param", 143, "?", "InputParameter", None), ("log_param", 134, "?", "LogParameter", None),
        ("lrn_param", 118, "?", "LRNParameter", None),
        ("memory_data_param", 119, "?", "MemoryDataParameter", None), ("mvn_param", 120, "?", "MVNParameter", None),
        ("parameter_param", 145, "?", "ParameterParameter", None), ("pooling_param", 121, "?", "PoolingParameter", None),
        ("power_param", 122, "?", "PowerParameter", None), ("prelu_param", 131, "?", "PReLUParameter", None),
        ("python_param", 130, "?", _O, None), ("recurrent_param", 146, "?", "RecurrentParameter", None),
        ("reduction_param", 136, "?", "ReductionParameter", None), ("relu_param", 123, "?", "ReLUParameter", None),
        ("reshape_param", 133, "?", "ReshapeParameter", None), ("scale_param", 142, "?", "ScaleParameter", None),
        ("sigmoid_param", 124, "?", "SigmoidParameter", None), ("softmax_param", 125, "?", "SoftmaxParameter", None),
        ("spp_param", 132, "?", "SPPParameter", None), ("slice_param", 126, "?", "SliceParameter", None),
        ("swish_param", 147, "?", "SwishParameter", None), ("tanh_param", 127, "?", "TanHParameter", None),
        ("threshold_param", 128, "?", "ThresholdParameter", None), ("tile_param", 138, "?", "TileParameter", None),
        ("window_data_param", 129, "?", _O, None), ("clip_param", 148, "?", "ClipParameter", None),
        # Fork fields. Where a fork's number is taken by BVLC (SegNet's upsample_param 137 and
        # dense_image_data_param 138, ENet's upsample_param 147, DeepLab's interp_param 143),
        # BVLC keeps it and the fork's field gets a free number: only prototxt text (by name)
        # ever carries these here; .caffemodels are read by name, type and blobs alone.
        ("permute_param", 202, "?", "PermuteParameter", None), ("prior_box_param", 203, "?", "PriorBoxParameter", None),
        ("detection_output_param", 204, "?", "DetectionOutputParameter", None),
        ("norm_param", 206, "?", "NormalizeParameter", None),
        ("shuffle_channel_param", 164, "?", "ShuffleChannelParameter", None),
        ("bn_param", 45, "?", "BNParameter", None), ("dense_image_data_param", 46, "?", _O, None),
        ("upsample_param", 5137, "?", "UpsampleParameter", None), ("interp_param", 2143, "?", "InterpParameter", None),
    ],
    "V1LayerParameter": [
        ("bottom", 2, "*", "string", None), ("top", 3, "*", "string", None), ("name", 4, "?", "string", None),
        ("include", 32, "*", "NetStateRule", None), ("exclude", 33, "*", "NetStateRule", None),
        ("type", 5, "?", "V1LayerParameter.LayerType", None), ("blobs", 6, "*", "BlobProto", None),
        ("param", 1001, "*", "string", None), ("blob_share_mode", 1002, "*", "V1LayerParameter.DimCheckMode", None),
        ("blobs_lr", 7, "*", "float", None), ("weight_decay", 8, "*", "float", None),
        ("loss_weight", 35, "*", "float", None), ("accuracy_param", 27, "?", _O, None),
        ("argmax_param", 23, "?", "ArgMaxParameter", None), ("concat_param", 9, "?", "ConcatParameter", None),
        ("contrastive_loss_param", 40, "?", _O, None), ("convolution_param", 10, "?", "ConvolutionParameter", None),
        ("data_param", 11, "?", _O, None), ("dropout_param", 12, "?", "DropoutParameter", None),
        ("dummy_data_param", 26, "?", "DummyDataParameter", None),
        ("eltwise_param", 24, "?", "EltwiseParameter", None), ("exp_param", 41, "?", "ExpParameter", None),
        ("hdf5_data_param", 13, "?", _O, None), ("hdf5_output_param", 14, "?", _O, None),
        ("hinge_loss_param", 29, "?", _O, None), ("image_data_param", 15, "?", "ImageDataParameter", None),
        ("infogain_loss_param", 16, "?", _O, None),
        ("inner_product_param", 17, "?", "InnerProductParameter", None),
        ("lrn_param", 18, "?", "LRNParameter", None), ("memory_data_param", 22, "?", "MemoryDataParameter", None),
        ("mvn_param", 34, "?", "MVNParameter", None), ("pooling_param", 19, "?", "PoolingParameter", None),
        ("power_param", 21, "?", "PowerParameter", None), ("relu_param", 30, "?", "ReLUParameter", None),
        ("sigmoid_param", 38, "?", "SigmoidParameter", None), ("softmax_param", 39, "?", "SoftmaxParameter", None),
        ("slice_param", 31, "?", "SliceParameter", None), ("tanh_param", 37, "?", "TanHParameter", None),
        ("threshold_param", 25, "?", "ThresholdParameter", None), ("window_data_param", 20, "?", _O, None),
        ("transform_param", 36, "?", "TransformationParameter", None), ("loss_param", 42, "?", _O, None),
        ("layer", 1, "?", _O, None),  # V0 layer: recognised only to be refused with a clear message
    ],
    # Minimal views of a binary .caffemodel: only what matching blobs by layer name needs, so
    # that weights written by any Caffe fork parse (their other fields are skipped as unknown).
    "WeightsLayer": [("name", 1, "?", "string", None), ("type", 2, "?", "string", None),
                     ("blobs", 7, "*", "BlobProto", None)],
    "WeightsV1Layer": [("name", 4, "?", "string", None), ("type", 5, "?", "int32", None),
                       ("blobs", 6, "*", "BlobProto", None)],
    "WeightsNet": [("name", 1, "?", "string", None), ("layer", 100, "*", "WeightsLayer", None),
                   ("layers", 2, "*", "WeightsV1Layer", None)],
}

# Messages whose unknown fields the text reader skips instead of reporting: the solver (dozens
# of training settings), opaque parameters of layers the tool never runs, and data-layer
# settings that forks extend freely.
LENIENT = frozenset({"SolverParameter", "Opaque", "TransformationParameter", "ImageDataParameter",
                     "MemoryDataParameter"})


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto(name="lsuv_caffe.proto", package=PACKAGE, syntax="proto2")
    by_name: dict[str, descriptor_pb2.DescriptorProto] = {}
    for name in MESSAGES:
        by_name[name] = fdp.message_type.add(name=name)
    for enum_name, values in ENUMS.items():
        owner, _, short = enum_name.rpartition(".")
        target = by_name[owner].enum_type if owner else fdp.enum_type
        enum = target.add(name=short)
        for value_name, number in values:
            enum.value.add(name=value_name, number=number)
    for name, fields in MESSAGES.items():
        message = by_name[name]
        for field_name, number, label, type_name, default in fields:
            fd = message.field.add(name=field_name, number=number)
            fd.label = (descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED if label.startswith("*")
                        else descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
            if label == "*p":
                fd.options.packed = True
            if type_name in _SCALARS:
                fd.type = _SCALARS[type_name]
            elif type_name in ENUMS:
                fd.type = descriptor_pb2.FieldDescriptorProto.TYPE_ENUM
                fd.type_name = f".{PACKAGE}.{type_name}"
            else:
                fd.type = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
                fd.type_name = f".{PACKAGE}.{type_name}"
            if default is not None:
                fd.default_value = default
    return fdp


def _build() -> SimpleNamespace:
    pool = descriptor_pool.DescriptorPool()
    pool.Add(_file_descriptor())
    get_class = getattr(message_factory, "GetMessageClass", None)  # protobuf >= 4.22
    if get_class is None:  # pragma: no cover - older protobuf
        get_class = message_factory.MessageFactory(pool).GetPrototype
    classes = {name: get_class(pool.FindMessageTypeByName(f"{PACKAGE}.{name}")) for name in MESSAGES}
    return SimpleNamespace(pool=pool, **classes)


caffe_pb = _build()
"""Message classes by name: ``caffe_pb.NetParameter()``, ``caffe_pb.BlobProto``, ..."""
