#include "loader/safetensors_writer.hpp"

#include <algorithm>
#include <cstring>
#include <numeric>

#include "common/error.hpp"
#include "common/tensor_names.hpp"
#include "loader/checked_math.hpp"
#include "loader/json_text.hpp"

namespace picklejail::loader {
namespace {

void append_uint_array(std::string& out, const std::vector<std::uint64_t>& values) {
    out.push_back('[');
    for (std::size_t i = 0; i < values.size(); ++i) {
        if (i != 0) out.push_back(',');
        append_json_integer(out, values[i]);
    }
    out.push_back(']');
}

// Dimensions that a plain nested loop walks: size-1 dimensions dropped,
// neighbours merged when the outer one steps exactly over the inner one.
struct CollapsedView {
    std::vector<std::uint64_t> shape;
    std::vector<std::uint64_t> stride;
};

CollapsedView collapse(const std::vector<std::uint64_t>& shape,
                       const std::vector<std::uint64_t>& stride) {
    CollapsedView view;
    for (std::size_t i = 0; i < shape.size(); ++i) {
        if (shape[i] == 1) continue;
        if (!view.shape.empty() && view.stride.back() == stride[i] * shape[i]) {
            view.shape.back() *= shape[i];
            view.stride.back() = stride[i];
        } else {
            view.shape.push_back(shape[i]);
            view.stride.push_back(stride[i]);
        }
    }
    return view;
}

}  // namespace

void gather_strided(std::span<const std::byte> storage, std::uint64_t offset,
                    const std::vector<std::uint64_t>& shape,
                    const std::vector<std::uint64_t>& stride, std::size_t element_size,
                    std::span<std::byte> dst) {
    if (dst.empty()) return;
    const CollapsedView view = collapse(shape, stride);
    const std::byte* base = storage.data() + offset * element_size;
    if (view.shape.empty()) {  // a scalar or all-ones shape
        std::memcpy(dst.data(), base, element_size);
        return;
    }
    const std::size_t rank = view.shape.size();
    // The innermost run is one memcpy when contiguous, else element by element.
    const bool inner_contiguous = view.stride.back() == 1;
    const std::size_t inner_count = view.shape.back();
    const std::size_t inner_bytes = inner_count * element_size;
    std::vector<std::uint64_t> index(rank, 0);
    std::byte* out = dst.data();
    const std::byte* const out_end = dst.data() + dst.size();
    while (out < out_end) {
        std::uint64_t element = 0;
        for (std::size_t d = 0; d + 1 < rank; ++d) element += index[d] * view.stride[d];
        const std::byte* src = base + element * element_size;
        if (inner_contiguous) {
            std::memcpy(out, src, inner_bytes);
        } else {
            const std::size_t step = view.stride.back() * element_size;
            for (std::size_t k = 0; k < inner_count; ++k)
                std::memcpy(out + k * element_size, src + k * step, element_size);
        }
        out += inner_bytes;
        for (std::size_t d = rank - 1; d-- > 0;) {  // odometer over the outer dimensions
            if (++index[d] < view.shape[d]) break;
            index[d] = 0;
        }
    }
}

void swap_bytes(std::span<std::byte> data, std::size_t width) {
    if (width <= 1) return;
    for (std::size_t i = 0; i + width <= data.size(); i += width) {
        std::reverse(data.begin() + static_cast<long>(i),
                     data.begin() + static_cast<long>(i + width));
    }
}

namespace {

// Room for the whole header up front: grown by doubling, a header of
// megabytes (20,000 tensors) would be copied into fresh memory at every
// step. An over-estimate costs only address space, pages are touched as
// they are written; an under-estimate one more growth.
std::size_t header_estimate(const std::vector<TensorSource>& tensors,
                            const std::map<std::string, std::string>& metadata,
                            const Limits& limits) {
    constexpr std::size_t kPerEntry = 96;  // the fixed keys, dtype, a 4-d shape, two offsets
    std::size_t bytes = 64;
    for (const auto& [key, value] : metadata) {
        // JSON inside a JSON string: quotes are escaped, a fifth more is typical.
        bytes = checked_add(bytes, key.size() + value.size() + value.size() / 4 + 8, "header size");
    }
    for (const auto& tensor : tensors) {
        bytes = checked_add(bytes, tensor.name.size() + kPerEntry, "header size");
    }
    return std::min<std::size_t>(bytes, limits.max_header_bytes + 64);
}

}  // namespace

SafetensorsLayout SafetensorsLayout::plan(std::vector<TensorSource> tensors,
                                          const std::map<std::string, std::string>& metadata,
                                          const Limits& limits, std::size_t alignment) {
    // Sorted through an index: moving the sources themselves costs more than
    // comparing them when a file holds many small tensors.
    std::vector<std::size_t> order(tensors.size());
    std::iota(order.begin(), order.end(), std::size_t{0});
    std::sort(order.begin(), order.end(), [&tensors](std::size_t i, std::size_t j) {
        const TensorSource& a = tensors[i];
        const TensorSource& b = tensors[j];
        const auto ra = info(a.dtype).write_rank;
        const auto rb = info(b.dtype).write_rank;
        return ra != rb ? ra > rb : a.name < b.name;
    });
    SafetensorsLayout layout;
    std::string json;
    json.reserve(header_estimate(tensors, metadata, limits));
    json += "{";
    if (!metadata.empty()) {
        json += "\"__metadata__\":{";
        bool first = true;
        for (const auto& [key, value] : metadata) {
            if (!first) json.push_back(',');
            first = false;
            append_json_string(json, key);
            json.push_back(':');
            append_json_string(json, value);
        }
        json += "}";
    }
    std::uint64_t cursor = 0;
    layout.tensors_.reserve(tensors.size());
    for (const std::size_t index : order) {
        TensorSource& source = tensors[index];
        if (source.name.size() > kMaxTensorNameBytes) {
            throw Error(ErrorCode::too_large,
                        "a tensor name is " + std::to_string(source.name.size()) +
                            " bytes long; at most " + std::to_string(kMaxTensorNameBytes) +
                            " are allowed");
        }
        LaidOutTensor out;
        out.safetensors_dtype = std::string(info(source.dtype).safetensors_name);
        out.written_shape = source.shape;
        std::uint64_t bytes = info(source.dtype).element_size;
        for (const auto dim : source.shape) bytes = checked_mul(bytes, dim, "tensor size");
        if (source.dtype == DType::complex128) out.written_shape.push_back(2);  // F64 pairs
        out.begin = cursor;
        out.end = cursor = checked_add(cursor, bytes, "output size");
        if (json.size() > 1) json.push_back(',');
        append_json_string(json, source.name);
        json += ":{\"dtype\":\"";
        json += out.safetensors_dtype;
        json += "\",\"shape\":";
        append_uint_array(json, out.written_shape);
        json += ",\"data_offsets\":[";
        append_json_integer(json, out.begin);
        json.push_back(',');
        append_json_integer(json, out.end);
        json += "]}";
        if (json.size() > limits.max_header_bytes) {
            throw Error(ErrorCode::too_large, "safetensors header exceeds max_header_bytes (" +
                                                  std::to_string(limits.max_header_bytes) + ")");
        }
        out.source = std::move(source);
        layout.tensors_.push_back(std::move(out));
    }
    json.push_back('}');
    const std::size_t padded = (8 + json.size() + alignment - 1) / alignment * alignment - 8;
    json.resize(padded, ' ');
    if (json.size() > limits.max_header_bytes) {
        throw Error(ErrorCode::too_large, "safetensors header exceeds max_header_bytes");
    }
    layout.header_ = std::move(json);
    layout.data_offset_ = 8 + layout.header_.size();
    layout.data_size_ = cursor;
    if (layout.total_size() > limits.max_output_bytes) {
        throw Error(ErrorCode::too_large, "output of " + std::to_string(layout.total_size()) +
                                              " bytes exceeds max_output_bytes (" +
                                              std::to_string(limits.max_output_bytes) + ")");
    }
    return layout;
}

void SafetensorsLayout::write_header(std::span<std::byte> out) const {
    const std::uint64_t n = header_.size();
    for (int i = 0; i < 8; ++i)
        out[static_cast<std::size_t>(i)] = static_cast<std::byte>((n >> (8 * i)) & 0xFF);
    std::memcpy(out.data() + 8, header_.data(), header_.size());
}

void SafetensorsLayout::write_tensor(std::size_t index, std::span<std::byte> out) const {
    const LaidOutTensor& t = tensors_.at(index);
    const auto& d = info(t.source.dtype);
    gather_strided(t.source.storage, t.source.offset, t.source.shape, t.source.stride,
                   d.element_size, out);
    if (t.source.big_endian) swap_bytes(out, d.swap_width);
}

std::span<const std::byte> SafetensorsLayout::contiguous_source(std::size_t index) const {
    const LaidOutTensor& t = tensors_.at(index);
    const auto& d = info(t.source.dtype);
    if (t.end == t.begin || (t.source.big_endian && d.swap_width > 1)) return {};
    // C order: each stride equals the product of the later dimensions
    // (dimensions of size 1 may have any stride).
    std::uint64_t expected = 1;
    for (std::size_t i = t.source.shape.size(); i-- > 0;) {
        if (t.source.shape[i] != 1 && t.source.stride[i] != expected) return {};
        expected *= t.source.shape[i];
    }
    // plan() checked the view against its storage, so these cannot overflow.
    const std::uint64_t length = t.end - t.begin;
    return t.source.storage.subspan(t.source.offset * d.element_size, length);
}

void SafetensorsLayout::write(std::span<std::byte> out) const {
    if (out.size() != total_size())
        throw Error(ErrorCode::internal, "output buffer has the wrong size");
    write_header(out.first(data_offset_));
    for (std::size_t i = 0; i < tensors_.size(); ++i) {
        const auto& t = tensors_[i];
        write_tensor(i, out.subspan(data_offset_ + t.begin, t.end - t.begin));
    }
}

}  // namespace picklejail::loader
