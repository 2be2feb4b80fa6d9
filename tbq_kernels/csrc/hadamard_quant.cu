// tbq: the online Hadamard of a W4A4/W4A8 layer's input fused with its per-token activation codes
// (tbq_kernels/hadamard_quant.py). One block per token:
//   1. each warp takes rows of X [m, P] (the token's n = m P inputs) and applies the Sylvester transform S_P by
//      butterflies, E = P / 32 consecutive inputs per lane (log2 E in-thread stages, 5 shuffle stages), into shared
//      memory as float32 (rows padded to MP with zeros, row stride P + 8 so the mma's operand reads are conflict-free);
//   2. (MIX) the order-m mix Y <- sign(B) Y on the tensor cores, mma.m16n8k8 tf32 with float32 accumulation: each warp
//      owns column tiles of 8 and writes its results back over them;
//   3. s = clip * max|y| / qmax with y = norm * Y, norm = 1 / sqrt(m P) (MIX) or 1 / sqrt(P); q = clamp(rn(y / s)),
//      read back in row order, int8 codes written 4 at a time.
// B's entries are +-1 / sqrt(m) (a Hadamard base): the kernel uses their signs (exact in tf32) and folds 1/sqrt(m)
// into norm. The inputs keep 10 mantissa bits in the mix (tf32), what the fp16 two-pass transform kept.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

namespace {

constexpr int THREADS = 256;
constexpr int WARPS = THREADS / 32;

struct Args {
  const void* x;      // [T, n] activations, rows stride_x elements apart, 16-byte aligned rows
  long long stride_x;
  const float* base;  // [m, m] H_m^T / sqrt(m) (MIX), row-major
  int8_t* q;          // [T, n] codes, contiguous
  float* s;           // [T] scales
  int m;              // rows of P inputs per token (n = m P)
  float norm, clip, qmax;
};

__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

__device__ __forceinline__ uint32_t tf32(float v) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(v));
  return r;
}

// D = A (16x8, row) * B (8x8, col) + D; tf32 operands, float32 accumulators
__device__ __forceinline__ void mma_tf32(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
               "{%0,%1,%2,%3};"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Row r of the token through S_P: lane holds inputs lane*E .. lane*E + E - 1, in and out of v.
template <typename T, int P>
__device__ __forceinline__ void sylvester_row(float (&v)[P / 32], const T* src, int lane) {
  constexpr int E = P / 32;
  const T* mine = src + lane * E;
  if constexpr (E * sizeof(T) % 16 == 0) {
#pragma unroll
    for (int c = 0; c < E * (int)sizeof(T) / 16; ++c) {
      const uint4 w = reinterpret_cast<const uint4*>(mine)[c];
      const T* h = reinterpret_cast<const T*>(&w);
#pragma unroll
      for (int i = 0; i < 16 / (int)sizeof(T); ++i) v[c * (16 / sizeof(T)) + i] = to_float(h[i]);
    }
  } else {
#pragma unroll
    for (int i = 0; i < E; ++i) v[i] = to_float(mine[i]);
  }
#pragma unroll
  for (int h = 1; h < E; h <<= 1) {
#pragma unroll
    for (int i = 0; i < E; ++i) {
      if (!(i & h)) {
        const float a = v[i], b = v[i + h];
        v[i] = a + b;
        v[i + h] = a - b;
      }
    }
  }
#pragma unroll
  for (int j = 1; j < 32; j <<= 1) {
#pragma unroll
    for (int i = 0; i < E; ++i) {
      const float o = __shfl_xor_sync(0xffffffffu, v[i], j);
      v[i] = (lane & j) ? o - v[i] : v[i] + o;
    }
  }
}

template <typename T, int P, int MP>
__global__ void __launch_bounds__(THREADS) hadamard_quant_kernel(const Args a) {
  constexpr int E = P / 32;
  constexpr int S = P + 8;  // shared row stride (floats)
  extern __shared__ float ys[];  // [rows][S], then (MIX) the sign matrix [MP][MP]
  __shared__ float red[WARPS];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int m = a.m;
  const int rows = MP ? MP : m;
  const T* xt = static_cast<const T*>(a.x) + (long long)blockIdx.x * a.stride_x;

  for (int r = warp; r < rows; r += WARPS) {
    float v[E];
    if (r < m) {
      sylvester_row<T, P>(v, xt + (long long)r * P, lane);
    } else {
#pragma unroll
      for (int i = 0; i < E; ++i) v[i] = 0.f;
    }
#pragma unroll
    for (int i = 0; i < E; ++i) ys[r * S + lane * E + i] = v[i];
  }
  if constexpr (MP > 0) {
    float* sign = ys + MP * S;
    for (int i = threadIdx.x; i < MP * MP; i += THREADS) {
      const int r = i / MP, c = i % MP;
      sign[i] = (r < m && c < m) ? (a.base[r * m + c] < 0.f ? -1.f : 1.f) : 0.f;
    }
  }
  __syncthreads();

  if constexpr (MP > 0) {
    const float* sign = ys + MP * S;
    const int g = lane >> 2, t = lane & 3;
    for (int nt = warp; nt < P / 8; nt += WARPS) {
      float acc[MP / 16][4];
#pragma unroll
      for (int mt = 0; mt < MP / 16; ++mt) {
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[mt][i] = 0.f;
#pragma unroll
        for (int kt = 0; kt < MP / 8; ++kt) {
          const uint32_t frag[4] = {__float_as_uint(sign[(mt * 16 + g) * MP + kt * 8 + t]),  // +-1, 0: exact tf32
                                    __float_as_uint(sign[(mt * 16 + g + 8) * MP + kt * 8 + t]),
                                    __float_as_uint(sign[(mt * 16 + g) * MP + kt * 8 + t + 4]),
                                    __float_as_uint(sign[(mt * 16 + g + 8) * MP + kt * 8 + t + 4])};
          mma_tf32(acc[mt], frag, tf32(ys[(kt * 8 + t) * S + nt * 8 + g]), tf32(ys[(kt * 8 + t + 4) * S + nt * 8 + g]));
        }
      }
      __syncwarp();
#pragma unroll
      for (int mt = 0; mt < MP / 16; ++mt) {
        ys[(mt * 16 + g) * S + nt * 8 + 2 * t] = acc[mt][0];
        ys[(mt * 16 + g) * S + nt * 8 + 2 * t + 1] = acc[mt][1];
        ys[(mt * 16 + g + 8) * S + nt * 8 + 2 * t] = acc[mt][2];
        ys[(mt * 16 + g + 8) * S + nt * 8 + 2 * t + 1] = acc[mt][3];
      }
    }
    __syncthreads();
  }

  float amax = 0.f;
  const int chunks = m * P / 4;
  for (int ci = threadIdx.x; ci < chunks; ci += THREADS) {
    const int r = ci * 4 / P, c = ci * 4 % P;
    const float4 w = *reinterpret_cast<const float4*>(ys + r * S + c);
    amax = fmaxf(amax, fmaxf(fmaxf(fabsf(w.x), fabsf(w.y)), fmaxf(fabsf(w.z), fabsf(w.w))));
  }
#pragma unroll
  for (int j = 16; j; j >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, j));
  if (lane == 0) red[warp] = amax;
  __syncthreads();
  amax = red[0];
#pragma unroll
  for (int w = 1; w < WARPS; ++w) amax = fmaxf(amax, red[w]);
  float s = __fdiv_rn(a.clip * (amax * a.norm), a.qmax);
  s = s > 0.f ? s : 1.f;
  if (threadIdx.x == 0) a.s[blockIdx.x] = s;
  int8_t* qt = a.q + (long long)blockIdx.x * m * P;
  for (int ci = threadIdx.x; ci < chunks; ci += THREADS) {
    const int r = ci * 4 / P, c = ci * 4 % P;
    const float4 w = *reinterpret_cast<const float4*>(ys + r * S + c);
    const float vals[4] = {w.x, w.y, w.z, w.w};
    char4 out;
    int8_t* o = reinterpret_cast<int8_t*>(&out);
#pragma unroll
    for (int i = 0; i < 4; ++i)
      o[i] = (int8_t)fminf(fmaxf(rintf(__fdiv_rn(vals[i] * a.norm, s)), -a.qmax - 1.f), a.qmax);
    reinterpret_cast<char4*>(qt)[ci] = out;
  }
}

template <typename T, int P, int MP>
int launch(const Args& a, int tokens, cudaStream_t stream) {
  const int rows = MP ? MP : a.m;
  const size_t smem = sizeof(float) * ((size_t)rows * (P + 8) + (size_t)MP * MP);
  static bool configured = false;  // the attribute is set once, before any CUDA-graph capture
  if (!configured) {
    const cudaError_t e = cudaFuncSetAttribute(hadamard_quant_kernel<T, P, MP>,
                                               cudaFuncAttributeMaxDynamicSharedMemorySize, 160 * 1024);
    if (e != cudaSuccess) return (int)e;
    configured = true;
  }
  if (smem > 160 * 1024) return -1;
  hadamard_quant_kernel<T, P, MP><<<tokens, THREADS, smem, stream>>>(a);
  return (int)cudaGetLastError();
}

template <typename T, int P>
int by_rows(const Args& a, int mp, int tokens, cudaStream_t stream) {
  switch (mp) {
    case 0: return launch<T, P, 0>(a, tokens, stream);
    case 16: return launch<T, P, 16>(a, tokens, stream);
    case 32: return launch<T, P, 32>(a, tokens, stream);
    case 64: return launch<T, P, 64>(a, tokens, stream);
    default: return -1;
  }
}

template <typename T>
int by_order(const Args& a, int p, int mp, int tokens, cudaStream_t stream) {
  switch (p) {
    case 64: return by_rows<T, 64>(a, mp, tokens, stream);
    case 128: return by_rows<T, 128>(a, mp, tokens, stream);
    case 256: return by_rows<T, 256>(a, mp, tokens, stream);
    case 512: return by_rows<T, 512>(a, mp, tokens, stream);
    case 1024: return by_rows<T, 1024>(a, mp, tokens, stream);
    default: return -1;
  }
}

}  // namespace

// Returns 0, a CUDA error code, or -1 for a configuration the kernel is not built for (p, mp, shared memory).
extern "C" int tbq_hadamard_quant(int dtype, const void* x, long long stride_x, const float* base, int m, int p,
                                  int mp, int tokens, int8_t* q, float* s, float norm, float clip, float qmax,
                                  void* stream) {
  const Args a{x, stride_x, base, q, s, m, norm, clip, qmax};
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  return dtype == 0 ? by_order<__half>(a, p, mp, tokens, st) : by_order<__nv_bfloat16>(a, p, mp, tokens, st);
}
