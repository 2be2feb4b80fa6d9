// tbq: the online Hadamard of a W4A4/W4A8 layer's input fused with its per-token activation codes
// (tbq_kernels/hadamard_quant.py). One block per token:
//   1. each warp takes rows of X [m, P] (the token's n = m P inputs; the next row's loads issued before the current
//      row's arithmetic) and applies the Sylvester transform S_P by butterflies, E = P / 32 consecutive inputs per
//      lane (log2 E in-thread stages, 5 shuffle stages), into shared memory as float32 (rows past m read as zeros),
//      column c of a row at c + c / E (one pad word per lane's run, so the stores are conflict-free) and rows P + 40
//      words apart (so the mma's operand reads are conflict-free);
//   2. (MIX) the order-m mix Y <- sign(B) Y on the tensor cores, mma.m16n8k8 tf32 with float32 accumulation, sign(B)
//      fragments in registers (MP <= 32) or read from a padded copy: each warp owns column tiles of 8 and writes its
//      results back over them;
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

}  // namespace

__device__ __forceinline__ float to_float_(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float_(__nv_bfloat16 v) { return __bfloat162float(v); }

namespace {

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

template <typename T, int P>
struct RowLoad {
  static constexpr int E = P / 32;
  static constexpr bool VECTOR = E * sizeof(T) % 16 == 0;
  static constexpr int WORDS = VECTOR ? E * sizeof(T) / 16 : 1;
  uint4 w[WORDS];
  T h[VECTOR ? 1 : E];

  __device__ __forceinline__ void load(const T* src, int lane) {
    const T* mine = src + lane * E;
    if constexpr (VECTOR) {
#pragma unroll
      for (int c = 0; c < WORDS; ++c) w[c] = reinterpret_cast<const uint4*>(mine)[c];
    } else {
#pragma unroll
      for (int i = 0; i < E; ++i) h[i] = mine[i];
    }
  }

  __device__ __forceinline__ void to_float(float (&v)[E]) const {
    if constexpr (VECTOR) {
#pragma unroll
      for (int c = 0; c < WORDS; ++c) {
        const T* e = reinterpret_cast<const T*>(&w[c]);
#pragma unroll
        for (int i = 0; i < 16 / (int)sizeof(T); ++i) v[c * (16 / sizeof(T)) + i] = ::to_float_(e[i]);
      }
    } else {
#pragma unroll
      for (int i = 0; i < E; ++i) v[i] = ::to_float_(h[i]);
    }
  }
};

// S_P over one row held E consecutive inputs per lane (lane holds inputs lane*E .. lane*E + E - 1), in place.
template <int P>
__device__ __forceinline__ void sylvester_row(float (&v)[P / 32], int lane) {
  constexpr int E = P / 32;
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

template <int P>
struct Layout {
  static constexpr int E = P / 32;
  static constexpr int S = P + 40;  // row stride in words: P + 32 pad words + 8 (mma reads hit distinct banks)
  __device__ static __forceinline__ int at(int r, int c) { return r * S + c + c / E; }
};

template <typename T, int P, int MP>
__global__ void __launch_bounds__(THREADS) hadamard_quant_kernel(const Args a) {
  constexpr int E = P / 32;
  constexpr int SA = MP + 4;  // sign matrix row stride (conflict-free fragment reads)
  using L = Layout<P>;
  extern __shared__ float ys[];  // [m][L::S] (rows past m read as zeros), then (MIX) the sign matrix [MP][SA]
  __shared__ float red[WARPS];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int m = a.m;
  const T* xt = static_cast<const T*>(a.x) + (long long)blockIdx.x * a.stride_x;

  if constexpr (MP > 0) {
    float* sign = ys + m * L::S;
    for (int i = threadIdx.x; i < MP * MP; i += THREADS) {
      const int r = i / MP, c = i % MP;
      sign[r * SA + c] = (r < m && c < m) ? (a.base[r * m + c] < 0.f ? -1.f : 1.f) : 0.f;
    }
  }
  RowLoad<T, P> next;
  if (warp < m) next.load(xt + (long long)warp * P, lane);
  for (int r = warp; r < m; r += WARPS) {
    float v[E];
    next.to_float(v);
    if (r + WARPS < m) next.load(xt + (long long)(r + WARPS) * P, lane);
    sylvester_row<P>(v, lane);
#pragma unroll
    for (int i = 0; i < E; ++i) ys[L::at(r, lane * E + i)] = v[i];
  }
  __syncthreads();

  if constexpr (MP > 0) {
    const float* sign = ys + m * L::S;
    const int g = lane >> 2, t = lane & 3;
    constexpr bool HELD = MP <= 32;  // sign(B) fragments kept in registers
    uint32_t held[HELD ? MP / 16 : 1][HELD ? MP / 8 : 1][4];
    auto fragment = [&](int mt, int kt, uint32_t (&f)[4]) {
      f[0] = __float_as_uint(sign[(mt * 16 + g) * SA + kt * 8 + t]);  // +-1 and 0 are exact tf32
      f[1] = __float_as_uint(sign[(mt * 16 + g + 8) * SA + kt * 8 + t]);
      f[2] = __float_as_uint(sign[(mt * 16 + g) * SA + kt * 8 + t + 4]);
      f[3] = __float_as_uint(sign[(mt * 16 + g + 8) * SA + kt * 8 + t + 4]);
    };
    if constexpr (HELD) {
#pragma unroll
      for (int mt = 0; mt < MP / 16; ++mt)
#pragma unroll
        for (int kt = 0; kt < MP / 8; ++kt) fragment(mt, kt, held[mt][kt]);
    }
    for (int nt = warp; nt < P / 8; nt += WARPS) {
      uint32_t b[MP / 8][2];
#pragma unroll
      for (int kt = 0; kt < MP / 8; ++kt) {
        b[kt][0] = kt * 8 + t < m ? tf32(ys[L::at(kt * 8 + t, nt * 8 + g)]) : 0u;
        b[kt][1] = kt * 8 + t + 4 < m ? tf32(ys[L::at(kt * 8 + t + 4, nt * 8 + g)]) : 0u;
      }
      float acc[MP / 16][4];
#pragma unroll
      for (int mt = 0; mt < MP / 16; ++mt) {
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[mt][i] = 0.f;
#pragma unroll
        for (int kt = 0; kt < MP / 8; ++kt) {
          if constexpr (HELD) {
            mma_tf32(acc[mt], held[mt][kt], b[kt][0], b[kt][1]);
          } else {
            uint32_t f[4];
            fragment(mt, kt, f);
            mma_tf32(acc[mt], f, b[kt][0], b[kt][1]);
          }
        }
      }
      __syncwarp();
#pragma unroll
      for (int mt = 0; mt < MP / 16; ++mt) {
        if (mt * 16 + g < m) {
          ys[L::at(mt * 16 + g, nt * 8 + 2 * t)] = acc[mt][0];
          ys[L::at(mt * 16 + g, nt * 8 + 2 * t + 1)] = acc[mt][1];
        }
        if (mt * 16 + g + 8 < m) {
          ys[L::at(mt * 16 + g + 8, nt * 8 + 2 * t)] = acc[mt][2];
          ys[L::at(mt * 16 + g + 8, nt * 8 + 2 * t + 1)] = acc[mt][3];
        }
      }
    }
    __syncthreads();
  }

  float amax = 0.f;
  const int n = m * P;
  for (int e = threadIdx.x; e < n; e += THREADS) amax = fmaxf(amax, fabsf(ys[L::at(e / P, e % P)]));
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
  char4* qt = reinterpret_cast<char4*>(a.q + (long long)blockIdx.x * n);
  for (int ci = threadIdx.x; ci < n / 4; ci += THREADS) {
    const int r = ci * 4 / P, c = ci * 4 % P;
    char4 out;
    int8_t* o = reinterpret_cast<int8_t*>(&out);
#pragma unroll
    for (int i = 0; i < 4; ++i)
      o[i] = (int8_t)fminf(fmaxf(rintf(__fdiv_rn(ys[L::at(r, c + i)] * a.norm, s)), -a.qmax - 1.f), a.qmax);
    qt[ci] = out;
  }
}

template <typename T, int P, int MP>
int launch(const Args& a, int tokens, cudaStream_t stream) {
  const size_t smem = sizeof(float) * ((size_t)a.m * Layout<P>::S + (size_t)MP * (MP + 4));
  constexpr int DEVICES = 64;
  // per device, the dynamic shared-memory limit found and set once (before any CUDA-graph capture); 0: not yet
  static int dynamic_limit[DEVICES] = {};
  int device = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e != cudaSuccess) return (int)e;
  if (device >= DEVICES) return -1;
  if (!dynamic_limit[device]) {
    int limit = 0;
    e = cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    if (e != cudaSuccess) return (int)e;
    cudaFuncAttributes attr;
    e = cudaFuncGetAttributes(&attr, hadamard_quant_kernel<T, P, MP>);
    if (e != cudaSuccess) return (int)e;
    const int dynamic = limit - (int)attr.sharedSizeBytes;  // the opt-in limit counts the static `red` too
    e = cudaFuncSetAttribute(hadamard_quant_kernel<T, P, MP>, cudaFuncAttributeMaxDynamicSharedMemorySize, dynamic);
    if (e != cudaSuccess) return (int)e;
    dynamic_limit[device] = dynamic;
  }
  if (smem > (size_t)dynamic_limit[device]) return -1;
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
