// Reads the float-format attributes that ops/float_format_attrs.h declares
// into a FloatFormatSpec, for every kernel that takes a format.
#ifndef TF_LOWPREC_KERNELS_FLOAT_FORMAT_ATTRS_H_
#define TF_LOWPREC_KERNELS_FLOAT_FORMAT_ATTRS_H_

#include <string>

#include "number_formats.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace tf_lowprec {

// The op's format attributes as a FloatFormatSpec (not yet validated:
// DeriveFloatGrid does that, with the same rules as lp.FloatFormat).
inline absl::Status GetFloatFormatAttrs(::tensorflow::OpKernelConstruction* ctx,
                                        FloatFormatSpec* spec) {
  std::string nan_encoding, overflow;
  TF_RETURN_IF_ERROR(ctx->GetAttr("exponent_bits", &spec->exponent_bits));
  TF_RETURN_IF_ERROR(ctx->GetAttr("mantissa_bits", &spec->mantissa_bits));
  TF_RETURN_IF_ERROR(ctx->GetAttr("exponent_bias", &spec->exponent_bias));
  TF_RETURN_IF_ERROR(ctx->GetAttr("subnormals", &spec->subnormals));
  TF_RETURN_IF_ERROR(ctx->GetAttr("nan_encoding", &nan_encoding));
  TF_RETURN_IF_ERROR(ctx->GetAttr("overflow", &overflow));
  TF_RETURN_IF_ERROR(ctx->GetAttr("flush_input_denormals", &spec->flush_input_denormals));
  // The op definitions restrict both strings to these values.
  spec->nan_encoding = nan_encoding == "all_ones"        ? NanEncoding::kAllOnes
                       : nan_encoding == "negative_zero" ? NanEncoding::kNegativeZero
                       : nan_encoding == "none"          ? NanEncoding::kNone
                                                         : NanEncoding::kIeee;
  spec->overflow = overflow == "saturate" ? Overflow::kSaturate
                   : overflow == "nan"    ? Overflow::kNan
                                          : Overflow::kInfinity;
  return absl::OkStatus();
}

}  // namespace tf_lowprec

#endif  // TF_LOWPREC_KERNELS_FLOAT_FORMAT_ATTRS_H_
