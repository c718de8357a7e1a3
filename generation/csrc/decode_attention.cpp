// Attention of a few query tokens per row over that row's cache, on the CPU: the engine's
// decode and verify passes (generation/cpu_attention.py says when it runs, docs/perf-notes.md
// what it measured).
//
// torch's CPU flash kernel runs these shapes as small GEMMs (a handful of query rows against
// blocks of 512 keys) and reads the cache far below memory speed; here each (row, key/value
// head) streams its keys and values once, every query head of its group against every key,
// with an online softmax over blocks of BLOCK keys, accumulating in float32. A query's result
// depends only on that query, its row's keys and values and its mask row: not on the other
// queries of the call, nor on how far the call's keys reach beyond the keys it sees (a hidden
// key adds an exact zero), so a token gets the same attention in a plain step, a verify tree or
// a padded batch.
//
// GCC vector extensions, so one source builds for AVX-512, AVX2 or NEON (-march=native).

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <atomic>
#include <numeric>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

typedef float f32x16 __attribute__((vector_size(64)));
typedef float f32x4 __attribute__((vector_size(16)));
typedef int32_t i32x16 __attribute__((vector_size(64)));
typedef uint16_t u16x16 __attribute__((vector_size(32)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));

constexpr int BLOCK = 32;  // keys per online-softmax block
constexpr int TILE = 4;    // query heads that share one read of a key
constexpr int64_t SPAN = 256;  // keys a thread takes at a time; spans merge in key order
constexpr float NEG_INF = -std::numeric_limits<float>::infinity();

inline f32x16 splat(float x) { return f32x16{} + x; }

inline f32x16 load16(const float* p) {
  f32x16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline f32x16 load16(const c10::BFloat16* p) {  // bfloat16 is the top half of a float32
  u16x16 raw;
  std::memcpy(&raw, p, sizeof raw);
  u32x16 wide = __builtin_convertvector(raw, u32x16) << 16;
  f32x16 v;
  std::memcpy(&v, &wide, sizeof v);
  return v;
}

// The lane sums of p0..p3, in that order; every input is summed in the same order.
inline f32x4 sum4(f32x16 p0, f32x16 p1, f32x16 p2, f32x16 p3) {
  f32x16 a = __builtin_shufflevector(p0, p1, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
             __builtin_shufflevector(p0, p1, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  f32x16 b = __builtin_shufflevector(p2, p3, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
             __builtin_shufflevector(p2, p3, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  f32x16 c = __builtin_shufflevector(a, b, 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
             __builtin_shufflevector(a, b, 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
  f32x16 d = c + __builtin_shufflevector(c, c, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
  f32x16 e = d + __builtin_shufflevector(d, d, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
  return f32x4{e[0], e[4], e[8], e[12]};
}

// exp(x) for x <= 0 (scores minus their running maximum): Cephes' expf polynomial after
// reducing by ln 2, about 2 ulp; 0 below -87 (and for -inf).
inline f32x16 exp16(f32x16 x) {
  f32x16 v = x < -87.0f ? splat(-87.0f) : x;
  f32x16 k = __builtin_convertvector(
      __builtin_convertvector(v * 1.44269504088896341f - 0.5f, i32x16), f32x16);  // round(v / ln 2)
  f32x16 r = v - k * 0.693145751953125f - k * 1.428606765330187045e-06f;
  f32x16 p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  i32x16 bits = (__builtin_convertvector(k, i32x16) + 127) << 23;  // 2^k
  f32x16 scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return x < -87.0f ? f32x16{} : p * scale;
}

// Where each row's queries, outputs and mask rows start (in elements), how many query tokens
// it has and how far its keys reach; strides shared by every row.
struct Rows {
  std::vector<int64_t> query, out, mask, count, keys;
  int64_t query_token, query_head, out_token, out_head, mask_token;
  int64_t key_row, key_head, key_pos, value_row, value_head, value_pos;
};

// A mask entry this far down hides its key: its weight is an exact zero beside any seen key.
constexpr float HIDDEN = -1e30f;

// One (row, key/value head, span of keys): per query of the group (head h * groups + m / q,
// token m % q) the span's running maximum, exp-sum and weighted value sum, into `part`
// ([m_tiles] maxima, [m_tiles] sums, then [m_tiles * D] values; `m_tiles`: the call's widest row).
template <typename T, int D>
void span(const T* Q, const T* K, const T* V, const T* Mk, const Rows& rows, int64_t groups,
          float scale, int64_t r, int64_t h, int64_t j_begin, int64_t j_end, int64_t m_tiles,
          float* part) {
  constexpr int DV = D / 16;
  const int64_t q = rows.count[r], m_all = groups * q;
  const int64_t m_row = (m_all + TILE - 1) / TILE * TILE;  // this row's queries, whole tiles
  std::vector<f32x16> qv(m_row * DV), acc(m_row * DV), kb(BLOCK * DV), vb(BLOCK * DV);
  std::vector<float> s(m_row * BLOCK);
  float* running_max = part;
  float* total = part + m_tiles;
  for (int64_t m = 0; m < m_row; ++m) {
    const T* src = Q + rows.query[r] + (h * groups + m / q) * rows.query_head + (m % q) * rows.query_token;
    for (int c = 0; c < DV; ++c) {
      qv[m * DV + c] = m < m_all ? load16(src + 16 * c) * scale : f32x16{};
      acc[m * DV + c] = f32x16{};
    }
    running_max[m] = NEG_INF;
    total[m] = 0.0f;
  }
  const T* Kr = K + r * rows.key_row + h * rows.key_head;
  const T* Vr = V + r * rows.value_row + h * rows.value_head;
  for (int64_t j0 = j_begin; j0 < j_end; j0 += BLOCK) {
    const int n = static_cast<int>(std::min<int64_t>(BLOCK, j_end - j0));
    for (int j = 0; j < n; ++j)
      for (int c = 0; c < DV; ++c) {
        kb[j * DV + c] = load16(Kr + (j0 + j) * rows.key_pos + 16 * c);
        vb[j * DV + c] = load16(Vr + (j0 + j) * rows.value_pos + 16 * c);
      }
    for (int64_t m0 = 0; m0 < m_row; m0 += TILE) {
      const f32x16* q0 = &qv[m0 * DV];
      for (int j = 0; j < n; ++j) {
        const f32x16* kj = &kb[j * DV];
        f32x16 p0 = q0[0] * kj[0], p1 = q0[DV] * kj[0];
        f32x16 p2 = q0[2 * DV] * kj[0], p3 = q0[3 * DV] * kj[0];
        for (int c = 1; c < DV; ++c) {
          p0 += q0[c] * kj[c];
          p1 += q0[DV + c] * kj[c];
          p2 += q0[2 * DV + c] * kj[c];
          p3 += q0[3 * DV + c] * kj[c];
        }
        const f32x4 dots = sum4(p0, p1, p2, p3);
        for (int t = 0; t < TILE; ++t) s[(m0 + t) * BLOCK + j] = dots[t];
      }
    }
    for (int64_t m = 0; m < m_all; ++m) {
      float* sm = &s[m * BLOCK];
      if (Mk != nullptr) {
        const T* bias = Mk + rows.mask[r] + (m % q) * rows.mask_token + j0;
        for (int j = 0; j < n; ++j) sm[j] += static_cast<float>(bias[j]);
      }
      std::fill(sm + n, sm + BLOCK, NEG_INF);
      float best = running_max[m];
      for (int j = 0; j < n; ++j) best = std::max(best, sm[j]);
      if (best == NEG_INF) continue;  // nothing seen yet
      const float rescale = std::exp(running_max[m] - best);  // 0 for a first block
      running_max[m] = best;
      float block_total = 0.0f;
      for (int j = 0; j < BLOCK; j += 16) {
        const f32x16 e = exp16(load16(sm + j) - best);
        std::memcpy(sm + j, &e, sizeof e);
        for (int l = 0; l < 16; ++l) block_total += e[l];
      }
      total[m] = total[m] * rescale + block_total;
      f32x16 a[DV];
      for (int c = 0; c < DV; ++c) a[c] = acc[m * DV + c] * rescale;
      for (int j = 0; j < n; ++j) {
        const f32x16 p = splat(sm[j]);
        for (int c = 0; c < DV; ++c) a[c] += p * vb[j * DV + c];
      }
      for (int c = 0; c < DV; ++c) acc[m * DV + c] = a[c];
    }
  }
  std::memcpy(part + 2 * m_tiles, acc.data(), m_row * D * sizeof(float));
}

// Every row's attention: spans of SPAN keys from key 0, whatever the call's length, so a row
// splits across threads even alone and a query's result does not depend on the call; a row
// stops at its last seen key (`rows.keys`); the spans merge in key order.
template <typename T, int D>
void attend(const T* Q, const T* K, const T* V, const T* Mk, const Rows& rows, int64_t groups,
            int64_t kv_heads, float scale, T* O) {
  constexpr int DV = D / 16;
  const int64_t n_rows = static_cast<int64_t>(rows.count.size());
  const int64_t q_max = *std::max_element(rows.count.begin(), rows.count.end());
  const int64_t m_tiles = (groups * q_max + TILE - 1) / TILE * TILE;
  const int64_t part_size = m_tiles * (D + 2);
  std::vector<int64_t> first(n_rows * kv_heads + 1, 0);  // each item's first unit
  for (int64_t item = 0; item < n_rows * kv_heads; ++item) {
    const int64_t keys = rows.keys[item / kv_heads];
    first[item + 1] = first[item] + (keys + SPAN - 1) / SPAN;
  }
  const int64_t units = first.back();
  std::vector<float> parts(units * part_size);
  // Units differ in cost (a row's tokens, a span's keys): the costliest first, each thread
  // taking the next one left, so one deep tree does not leave a thread idle.
  std::vector<int64_t> item_of(units), order(units);
  std::vector<double> cost(units);
  for (int64_t item = 0; item < n_rows * kv_heads; ++item)
    for (int64_t u = first[item]; u < first[item + 1]; ++u) {
      const int64_t r = item / kv_heads, k = u - first[item];
      item_of[u] = item;
      cost[u] = static_cast<double>(std::min(rows.keys[r], (k + 1) * SPAN) - k * SPAN) *
                static_cast<double>(groups * rows.count[r] + TILE);
    }
  std::iota(order.begin(), order.end(), int64_t{0});
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return cost[a] > cost[b]; });
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min<int64_t>(at::get_num_threads(), units), 1, [&](int64_t, int64_t) {
    for (int64_t i = next++; i < units; i = next++) {
      const int64_t unit = order[i], item = item_of[unit];
      const int64_t r = item / kv_heads, k = unit - first[item];
      span<T, D>(Q, K, V, Mk, rows, groups, scale, r, item % kv_heads, k * SPAN,
                 std::min(rows.keys[r], (k + 1) * SPAN), m_tiles, &parts[unit * part_size]);
    }
  });
  at::parallel_for(0, n_rows * kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<f32x16> acc(DV);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t r = item / kv_heads, h = item % kv_heads, q = rows.count[r];
      for (int64_t m = 0; m < groups * q; ++m) {
        float best = NEG_INF;
        for (int64_t u = first[item]; u < first[item + 1]; ++u)
          best = std::max(best, parts[u * part_size + m]);
        float total = 0.0f;
        for (int c = 0; c < DV; ++c) acc[c] = f32x16{};
        for (int64_t u = first[item]; u < first[item + 1]; ++u) {
          const float* part = &parts[u * part_size];
          if (part[m] == NEG_INF) continue;  // a span of hidden keys only
          const float weight = std::exp(part[m] - best);
          total += part[m_tiles + m] * weight;
          for (int c = 0; c < DV; ++c)
            acc[c] += load16(part + 2 * m_tiles + m * D + 16 * c) * weight;
        }
        T* dst = O + rows.out[r] + (h * groups + m / q) * rows.out_head + (m % q) * rows.out_token;
        const float inv = 1.0f / total;
        for (int c = 0; c < DV; ++c) {
          const f32x16 x = acc[c] * inv;
          for (int l = 0; l < 16; ++l) dst[16 * c + l] = static_cast<T>(x[l]);
        }
      }
    }
  });
}

// How far row r reaches: one past the last key any of its query tokens sees (all of them
// without a mask).
template <typename T>
int64_t seen_keys(const T* Mk, const Rows& rows, int64_t r, int64_t keys) {
  if (Mk == nullptr) return keys;
  int64_t reach = 1;  // key 0 at least: a row that sees nothing still gets a finite softmax
  const int64_t tokens = rows.mask_token == 0 ? 1 : rows.count[r];
  for (int64_t t = 0; t < tokens; ++t) {
    const T* bias = Mk + rows.mask[r] + t * rows.mask_token;
    int64_t j = keys;
    while (j > reach && static_cast<float>(bias[j - 1]) < HIDDEN) --j;
    reach = std::max(reach, j);
  }
  return reach;
}

template <typename T>
void run(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
         const at::Tensor& mask, Rows& rows, float scale, at::Tensor& out) {
  const T* Mk = mask.defined() ? mask.data_ptr<T>() : nullptr;
  for (size_t r = 0; r < rows.count.size(); ++r)
    rows.keys.push_back(seen_keys<T>(Mk, rows, static_cast<int64_t>(r), key.size(2)));
  const int64_t kv_heads = key.size(1), groups = query.size(1) / kv_heads;
  const T* Q = query.data_ptr<T>();
  const T* K = key.data_ptr<T>();
  const T* V = value.data_ptr<T>();
  switch (query.size(3)) {
    case 64: return attend<T, 64>(Q, K, V, Mk, rows, groups, kv_heads, scale, out.data_ptr<T>());
    case 128: return attend<T, 128>(Q, K, V, Mk, rows, groups, kv_heads, scale, out.data_ptr<T>());
    default: TORCH_CHECK(false, "decode_attention: head_dim 64 or 128, got ", query.size(3));
  }
}

void dispatch(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
              const at::Tensor& mask, Rows& rows, double scale, at::Tensor& out) {
  rows.key_row = key.stride(0); rows.key_head = key.stride(1); rows.key_pos = key.stride(2);
  rows.value_row = value.stride(0); rows.value_head = value.stride(1); rows.value_pos = value.stride(2);
  const float s = static_cast<float>(scale);
  if (query.scalar_type() == at::kFloat) {
    run<float>(query, key, value, mask, rows, s, out);
  } else if (query.scalar_type() == at::kBFloat16) {
    run<c10::BFloat16>(query, key, value, mask, rows, s, out);
  } else {
    TORCH_CHECK(false, "decode_attention: float32 or bfloat16, got ", query.scalar_type());
  }
}

void check_inputs(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value) {
  TORCH_CHECK(query.dim() == 4 && key.dim() == 4 && value.sizes() == key.sizes(),
              "decode_attention: 4-d query, key and value of one shape");
  TORCH_CHECK(query.size(3) == key.size(3) && query.size(1) % key.size(1) == 0 && key.size(2) > 0,
              "decode_attention: query and key/value disagree");
  TORCH_CHECK(query.stride(3) == 1 && key.stride(3) == 1 && value.stride(3) == 1,
              "decode_attention: the head dimension must be contiguous");
  TORCH_CHECK(key.scalar_type() == query.scalar_type() && value.scalar_type() == query.scalar_type(),
              "decode_attention: one dtype");
}

void check_mask(const at::Tensor& m, const at::Tensor& query, const at::Tensor& key, int64_t rows,
                int64_t tokens) {
  TORCH_CHECK(m.dim() == 4 && m.scalar_type() == query.scalar_type() && m.stride(3) == 1 &&
                  (m.size(0) == 1 || m.size(0) == rows) && m.size(1) == 1 &&
                  (m.size(2) == 1 || m.size(2) >= tokens) && m.size(3) >= key.size(2),
              "decode_attention: an additive mask [rows or 1, 1, tokens or 1, keys] in the query's dtype");
}

}  // namespace

// query [rows, heads, q, d], key/value [rows, kv_heads, keys, d] (any strides, d contiguous),
// mask: undefined (one token a row only), or additive [rows or 1, 1, q or 1, >= keys] in the
// query's dtype. Returns [rows, heads, q, d] laid out as [rows, q, heads, d] (what the model
// reshapes next).
at::Tensor decode_attention(const at::Tensor& query, const at::Tensor& key,
                            const at::Tensor& value, const c10::optional<at::Tensor>& mask,
                            double scale) {
  check_inputs(query, key, value);
  const int64_t b = query.size(0), heads = query.size(1), q = query.size(2), d = query.size(3);
  TORCH_CHECK(key.size(0) == b, "decode_attention: one key/value row per query row");
  at::Tensor m = mask.has_value() ? *mask : at::Tensor();
  if (m.defined()) check_mask(m, query, key, b, q);
  auto out = at::empty({b, q, heads, d}, query.options());
  Rows rows;
  for (int64_t r = 0; r < b; ++r) {
    rows.query.push_back(r * query.stride(0));
    rows.out.push_back(r * q * heads * d);
    rows.mask.push_back(m.defined() && m.size(0) > 1 ? r * m.stride(0) : 0);
    rows.count.push_back(q);
  }
  rows.query_token = query.stride(2); rows.query_head = query.stride(1);
  rows.out_token = heads * d; rows.out_head = d;
  rows.mask_token = m.defined() && m.size(2) > 1 ? m.stride(2) : 0;
  dispatch(query, key, value, m, rows, scale, out);
  return out.transpose(1, 2);
}

// A ragged pass: query [1, heads, N, d], row r's `sizes[r]` tokens from `offsets[r]`, over
// key/value row r; `mask [rows, 1, >= max size, >= keys]` gives row r's token t mask row t.
// Returns [N, heads, d].
at::Tensor ragged_attention(const at::Tensor& query, const at::Tensor& key,
                            const at::Tensor& value, const at::Tensor& mask,
                            const std::vector<int64_t>& offsets, const std::vector<int64_t>& sizes,
                            double scale) {
  check_inputs(query, key, value);
  const int64_t b = key.size(0), heads = query.size(1), n = query.size(2), d = query.size(3);
  TORCH_CHECK(query.size(0) == 1 && static_cast<int64_t>(offsets.size()) == b &&
                  static_cast<int64_t>(sizes.size()) == b,
              "ragged_attention: one flattened query row, an offset and a size per key/value row");
  const int64_t q_max = *std::max_element(sizes.begin(), sizes.end());
  for (int64_t r = 0; r < b; ++r)
    TORCH_CHECK(sizes[r] >= 1 && offsets[r] >= 0 && offsets[r] + sizes[r] <= n,
                "ragged_attention: row ", r, " outside the flattened queries");
  check_mask(mask, query, key, b, q_max);
  TORCH_CHECK(mask.size(0) == b && mask.size(2) >= q_max, "ragged_attention: a mask row per token");
  auto out = at::empty({n, heads, d}, query.options());
  Rows rows;
  for (int64_t r = 0; r < b; ++r) {
    rows.query.push_back(offsets[r] * query.stride(2));
    rows.out.push_back(offsets[r] * heads * d);
    rows.mask.push_back(r * mask.stride(0));
    rows.count.push_back(sizes[r]);
  }
  rows.query_token = query.stride(2); rows.query_head = query.stride(1);
  rows.out_token = heads * d; rows.out_head = d;
  rows.mask_token = mask.stride(2);
  dispatch(query, key, value, mask, rows, scale, out);
  return out;
}
