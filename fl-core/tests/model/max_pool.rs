//! Max pooling on the CPU backend against a direct reading of PyTorch's rule (padding never
//! chosen, the first maximum of a window, NaN always wins and the last NaN is reported), over
//! kernels, strides, paddings and dilations, with ties and NaNs in the input, so that the
//! pooling patch (`third_party/burn-flex`, `src/ops/pool.rs`: windows worked out once a call,
//! 2x2 and 3x3 windows unrolled) is checked beyond the reference CNN's shapes.

use burn::tensor::module::max_pool2d_with_indices;
use burn::tensor::ops::MaxPoolOptions;
use burn::tensor::{Tensor, TensorData};
use fl_core::model::Backend;

/// A pooling to check.
#[derive(Debug, Clone, Copy)]
struct Case {
    size: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
}

/// Values from a small set (so windows hold ties), with a NaN every `nan_every` values.
fn values(n: usize, nan_every: usize) -> Vec<f32> {
    let mut s = 0x2545_f491_4f6c_dd1du64;
    (0..n)
        .map(|i| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            match i % nan_every == nan_every - 1 {
                true => f32::NAN,
                false => ((s >> 60) as f32 - 8.0) * 0.25,
            }
        })
        .collect()
}

fn check(case: Case, nan_every: usize) {
    let Case {
        size: [h, w],
        kernel,
        stride,
        padding,
        dilation,
    } = case;
    let (batch, channels) = (2, 3);
    let out =
        |d: usize| ([h, w][d] + 2 * padding[d] - dilation[d] * (kernel[d] - 1) - 1) / stride[d] + 1;
    let (oh, ow) = (out(0), out(1));
    let xs = values(batch * channels * h * w, nan_every);
    let device = Backend::Flex.device();
    let x = Tensor::<4>::from_data(
        TensorData::new(xs.clone(), [batch, channels, h, w]),
        &device,
    );
    let options = MaxPoolOptions::new(kernel)
        .with_stride(stride)
        .with_padding(padding)
        .with_dilation(dilation);
    let (y, indices) = max_pool2d_with_indices(x, options);
    assert_eq!(y.dims(), [batch, channels, oh, ow], "{case:?}");
    let got = y.into_data().try_into_vec::<f32>().expect("f32");
    let got_idx = indices
        .into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .expect("i64");
    for plane in 0..batch * channels {
        let input = &xs[plane * h * w..(plane + 1) * h * w];
        for (y0, x0) in (0..oh).flat_map(|y0| (0..ow).map(move |x0| (y0, x0))) {
            let (mut best, mut at) = (f32::NEG_INFINITY, None::<usize>);
            for (ky, kx) in (0..kernel[0]).flat_map(|ky| (0..kernel[1]).map(move |kx| (ky, kx))) {
                let iy = (y0 * stride[0] + ky * dilation[0]).checked_sub(padding[0]);
                let ix = (x0 * stride[1] + kx * dilation[1]).checked_sub(padding[1]);
                let (Some(iy), Some(ix)) = (iy, ix) else {
                    continue;
                };
                if iy >= h || ix >= w {
                    continue;
                }
                let v = input[iy * w + ix];
                if at.is_none() || v > best || v.is_nan() {
                    (best, at) = (v, Some(iy * w + ix));
                }
            }
            let o = (plane * oh + y0) * ow + x0;
            let at = at.expect("every window here holds an input value");
            assert_eq!(got_idx[o], at as i64, "index of output {o}, {case:?}");
            assert_eq!(got[o].to_bits(), best.to_bits(), "output {o}, {case:?}");
        }
    }
}

#[test]
fn max_pooling_matches_a_direct_reading_over_kernels_strides_paddings_and_dilations() {
    let reference_cnn = Case {
        size: [16, 16],
        kernel: [3, 3],
        stride: [2, 2],
        padding: [1, 1],
        dilation: [1, 1],
    };
    let cases = [
        reference_cnn,
        Case {
            size: [9, 7],
            ..reference_cnn
        },
        Case {
            stride: [1, 1],
            ..reference_cnn
        },
        Case {
            kernel: [2, 2],
            padding: [0, 0],
            ..reference_cnn
        },
        Case {
            size: [7, 9],
            kernel: [2, 2],
            stride: [1, 2],
            padding: [1, 0],
            ..reference_cnn
        },
        Case {
            dilation: [2, 2],
            padding: [2, 2],
            ..reference_cnn
        },
        Case {
            kernel: [2, 3],
            stride: [1, 2],
            ..reference_cnn
        },
        Case {
            size: [11, 10],
            kernel: [4, 4],
            stride: [3, 3],
            padding: [2, 1],
            ..reference_cnn
        },
    ];
    for case in cases {
        // Without NaNs, and with one in every 13 and in every 3 values.
        for nan_every in [usize::MAX, 13, 3] {
            check(case, nan_every);
        }
    }
}
