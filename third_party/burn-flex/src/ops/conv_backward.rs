//! The backward passes of a 2D convolution (the gradients of its input and its weight) by
//! im2col and gemm, shaped for the gemm rather than expressed as other convolutions.
//!
//! burn-backend's defaults (which Flex used to inherit) run the weight gradient as a conv2d
//! whose batch is the input channels and whose kernel is the whole output plane: for a
//! 64-channel layer on 16x16 images at batch 64 that is 64 im2col buffers of 16384 x 25
//! (about 105 MB written a step) feeding gemms 25 columns wide. Here the weight gradient is
//! one gemm per image, `dW[co, (ci, kh, kw)] += dY[co, p] * col[(ci, kh, kw), p]^T`
//! (output channels by patch length over the image's output pixels), and the input gradient
//! one gemm per image, `dcol = W^T dY`, scattered back by col2im.
//!
//! Determinism: images are cut into fixed chunks of [`IMAGES_PER_CHUNK`]; each chunk's
//! weight gradient is summed in image order and the chunks' sums are added in chunk order,
//! so the result is the same bit for bit whatever the number of threads.

use alloc::vec;
use alloc::vec::Vec;

use burn_backend::ops::ConvOptions;
use bytemuck::Pod;
use num_traits::Float;

/// Images whose weight gradients one task sums before the chunks are added in order.
const IMAGES_PER_CHUNK: usize = 4;

/// A convolution's geometry, read from its input, weight and output-gradient shapes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    pub batch: usize,
    pub channels_in: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub channels_out: usize,
    pub kernel_h: usize,
    pub kernel_w: usize,
    pub out_h: usize,
    pub out_w: usize,
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
}

impl Geometry {
    /// The geometry of `x [B, Ci, H, W]` convolved by `weight [Co, Ci/groups, Kh, Kw]` into
    /// an output of `out [B, Co, Ho, Wo]`.
    pub fn new(x: &[usize], weight: &[usize], out: &[usize], options: &ConvOptions<2>) -> Self {
        Self {
            batch: x[0],
            channels_in: x[1],
            in_h: x[2],
            in_w: x[3],
            channels_out: weight[0],
            kernel_h: weight[2],
            kernel_w: weight[3],
            out_h: out[2],
            out_w: out[3],
            stride: options.stride,
            padding: options.padding_begin(),
            dilation: options.dilation,
            groups: options.groups,
        }
    }

    fn in_per_group(&self) -> usize {
        self.channels_in / self.groups
    }

    fn out_per_group(&self) -> usize {
        self.channels_out / self.groups
    }

    /// Rows of a group's im2col matrix: its input channels times the kernel's positions.
    fn patch(&self) -> usize {
        self.in_per_group() * self.kernel_h * self.kernel_w
    }

    fn pixels_out(&self) -> usize {
        self.out_h * self.out_w
    }

    fn pixels_in(&self) -> usize {
        self.in_h * self.in_w
    }

    /// The input row read by output row `o` at kernel row `k` (None in the padding).
    fn input_row(&self, o: usize, k: usize) -> Option<usize> {
        (o * self.stride[0] + k * self.dilation[0])
            .checked_sub(self.padding[0])
            .filter(|&i| i < self.in_h)
    }

    /// The input column read by output column `o` at kernel column `k`.
    fn input_col(&self, o: usize, k: usize) -> Option<usize> {
        (o * self.stride[1] + k * self.dilation[1])
            .checked_sub(self.padding[1])
            .filter(|&i| i < self.in_w)
    }

    /// Fills `col [patch, pixels_out]` with group `g`'s patches of one image `x [Ci, H, W]`.
    fn im2col<T: Float>(&self, x: &[T], g: usize, col: &mut [T]) {
        let (p, hw) = (self.pixels_out(), self.pixels_in());
        let mut row = 0;
        for ci in 0..self.in_per_group() {
            let plane = &x[(g * self.in_per_group() + ci) * hw..][..hw];
            for kh in 0..self.kernel_h {
                for kw in 0..self.kernel_w {
                    let dst = &mut col[row * p..][..p];
                    for oh in 0..self.out_h {
                        let line = &mut dst[oh * self.out_w..][..self.out_w];
                        match self.input_row(oh, kh) {
                            None => line.fill(T::zero()),
                            Some(ih) => {
                                let src = &plane[ih * self.in_w..][..self.in_w];
                                for (ow, v) in line.iter_mut().enumerate() {
                                    *v = self.input_col(ow, kw).map_or(T::zero(), |iw| src[iw]);
                                }
                            }
                        }
                    }
                    row += 1;
                }
            }
        }
    }

    /// Adds `col [patch, pixels_out]` back into group `g`'s channels of one image's input
    /// gradient `dx [Ci, H, W]`, in a fixed order.
    fn col2im<T: Float>(&self, col: &[T], g: usize, dx: &mut [T]) {
        let (p, hw) = (self.pixels_out(), self.pixels_in());
        let mut row = 0;
        for ci in 0..self.in_per_group() {
            let plane = &mut dx[(g * self.in_per_group() + ci) * hw..][..hw];
            for kh in 0..self.kernel_h {
                for kw in 0..self.kernel_w {
                    let src = &col[row * p..][..p];
                    for oh in 0..self.out_h {
                        let Some(ih) = self.input_row(oh, kh) else {
                            continue;
                        };
                        let line = &src[oh * self.out_w..][..self.out_w];
                        let dst = &mut plane[ih * self.in_w..][..self.in_w];
                        for (ow, &v) in line.iter().enumerate() {
                            if let Some(iw) = self.input_col(ow, kw) {
                                dst[iw] = dst[iw] + v;
                            }
                        }
                    }
                    row += 1;
                }
            }
        }
    }
}

/// `dst (+)= lhs * rhs` for row-major `lhs [m, k]` given by its strides, `rhs [k, n]` by its
/// strides and `dst [m, n]` row-major; single-threaded (the callers parallelise).
///
/// # Safety
/// The pointers must cover the matrices their strides describe.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_into<T: 'static + Float>(
    dst: &mut [T],
    accumulate: bool,
    lhs: *const T,
    lhs_rs: isize,
    lhs_cs: isize,
    rhs: *const T,
    rhs_rs: isize,
    rhs_cs: isize,
    m: usize,
    k: usize,
    n: usize,
) {
    debug_assert!(dst.len() >= m * n);
    // SAFETY: dst is m x n row-major (checked above); lhs and rhs by the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs,
            lhs_cs,
            lhs_rs,
            rhs,
            rhs_cs,
            rhs_rs,
            if accumulate { T::one() } else { T::zero() },
            T::one(),
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// The gradient of the weight `[Co, Ci/groups, Kh, Kw]` (row-major) from the input `x` and
/// the output gradient `dy`, both contiguous NCHW.
pub(crate) fn weight_grad<T: 'static + Float + Pod + Send + Sync>(
    geo: &Geometry,
    x: &[T],
    dy: &[T],
) -> Vec<T> {
    let (patch, p) = (geo.patch(), geo.pixels_out());
    let opg = geo.out_per_group();
    let weight_len = geo.channels_out * patch;
    let x_image = geo.channels_in * geo.pixels_in();
    let dy_image = geo.channels_out * p;
    let chunk = |images: core::ops::Range<usize>| -> Vec<T> {
        let mut dw = vec![T::zero(); weight_len];
        let mut col = vec![T::zero(); patch * p];
        for (i, b) in images.enumerate() {
            let x_b = &x[b * x_image..][..x_image];
            for g in 0..geo.groups {
                geo.im2col(x_b, g, &mut col);
                let dy_g = &dy[b * dy_image + g * opg * p..][..opg * p];
                let dw_g = &mut dw[g * opg * patch..][..opg * patch];
                // SAFETY: dy_g is opg x p row-major; col is patch x p row-major, read as
                // its transpose (p x patch: row stride 1, column stride p).
                unsafe {
                    gemm_into(
                        dw_g,
                        i > 0,
                        dy_g.as_ptr(),
                        p as isize,
                        1,
                        col.as_ptr(),
                        1,
                        p as isize,
                        opg,
                        p,
                        patch,
                    );
                }
            }
        }
        dw
    };
    let starts: Vec<usize> = (0..geo.batch).step_by(IMAGES_PER_CHUNK).collect();
    let range = |s: usize| s..(s + IMAGES_PER_CHUNK).min(geo.batch);
    #[cfg(feature = "rayon")]
    let partials: Vec<Vec<T>> = {
        use rayon::prelude::*;
        starts.par_iter().map(|&s| chunk(range(s))).collect()
    };
    #[cfg(not(feature = "rayon"))]
    let partials: Vec<Vec<T>> = starts.iter().map(|&s| chunk(range(s))).collect();
    let mut partials = partials.into_iter();
    let mut dw = partials.next().unwrap_or_else(|| vec![T::zero(); weight_len]);
    for part in partials {
        for (a, b) in dw.iter_mut().zip(part) {
            *a = *a + b;
        }
    }
    dw
}

/// The gradient of the input `[B, Ci, H, W]` from the weight `[Co, Ci/groups, Kh, Kw]` and
/// the output gradient `dy`, both contiguous.
pub(crate) fn input_grad<T: 'static + Float + Pod + Send + Sync>(
    geo: &Geometry,
    weight: &[T],
    dy: &[T],
) -> Vec<T> {
    let (patch, p) = (geo.patch(), geo.pixels_out());
    let opg = geo.out_per_group();
    let x_image = geo.channels_in * geo.pixels_in();
    let dy_image = geo.channels_out * p;
    let mut dx = vec![T::zero(); geo.batch * x_image];
    let image = |b: usize, dx_b: &mut [T], col: &mut Vec<T>| {
        for g in 0..geo.groups {
            let w_g = &weight[g * opg * patch..][..opg * patch];
            let dy_g = &dy[b * dy_image + g * opg * p..][..opg * p];
            // SAFETY: w_g is opg x patch row-major, read as its transpose (patch x opg: row
            // stride 1, column stride patch); dy_g is opg x p row-major.
            unsafe {
                gemm_into(
                    col,
                    false,
                    w_g.as_ptr(),
                    1,
                    patch as isize,
                    dy_g.as_ptr(),
                    p as isize,
                    1,
                    patch,
                    opg,
                    p,
                );
            }
            geo.col2im(col, g, dx_b);
        }
    };
    if x_image == 0 {
        return dx;
    }
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        dx.par_chunks_mut(x_image)
            .enumerate()
            .for_each_init(|| vec![T::zero(); patch * p], |col, (b, dx_b)| image(b, dx_b, col));
    }
    #[cfg(not(feature = "rayon"))]
    {
        let mut col = vec![T::zero(); patch * p];
        for (b, dx_b) in dx.chunks_mut(x_image).enumerate() {
            image(b, dx_b, &mut col);
        }
    }
    dx
}
