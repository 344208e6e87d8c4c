//! Convolution gradients on the CPU backend against a direct sum in f64, over strides,
//! paddings, dilations and groups the reference CNN does not use, so that the im2col-and-gemm
//! backward passes (`third_party/burn-flex`, `src/ops/conv_backward.rs`) are checked beyond
//! the shapes the PyTorch parity tests reach.

use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Tensor, TensorData};
use fl_core::model::Backend;

/// A convolution to check.
#[derive(Debug, Clone, Copy)]
struct Case {
    batch: usize,
    channels_in: usize,
    channels_out: usize,
    size: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
    groups: usize,
}

/// Values in [-1, 1) from a fixed linear congruential sequence.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn check(case: Case) {
    let Case {
        batch: b,
        channels_in: ci,
        channels_out: co,
        size: [h, w],
        kernel: [kh, kw],
        stride,
        padding,
        dilation,
        groups,
    } = case;
    let (cpg, opg) = (ci / groups, co / groups);
    let out = |i: usize, d: usize| {
        (i + 2 * padding[d] - dilation[d] * ([kh, kw][d] - 1) - 1) / stride[d] + 1
    };
    let (oh, ow) = (out(h, 0), out(w, 1));
    let device = Backend::Flex.device().autodiff();
    let xs = values(b * ci * h * w, 1);
    let ws = values(co * cpg * kh * kw, 2);
    let rs = values(b * co * oh * ow, 3);
    let x =
        Tensor::<4>::from_data(TensorData::new(xs.clone(), [b, ci, h, w]), &device).require_grad();
    let weight = Tensor::<4>::from_data(TensorData::new(ws.clone(), [co, cpg, kh, kw]), &device)
        .require_grad();
    let r = Tensor::<4>::from_data(TensorData::new(rs.clone(), [b, co, oh, ow]), &device);
    let options = ConvOptions::new(stride, padding, dilation, groups);
    let y = conv2d(x.clone(), weight.clone(), None, options);
    assert_eq!(y.dims(), [b, co, oh, ow], "{case:?}");
    let grads = (y * r).sum().backward();
    let got_x = x.grad(&grads).expect("x's gradient").into_data();
    let got_x = got_x.try_into_vec::<f32>().expect("f32");
    let got_w = weight
        .grad(&grads)
        .expect("the weight's gradient")
        .into_data();
    let got_w = got_w.try_into_vec::<f32>().expect("f32");

    // d(sum(y * r)) / dx and / dw, summed directly.
    let (mut want_x, mut want_w) = (vec![0f64; xs.len()], vec![0f64; ws.len()]);
    for n in 0..b {
        for o in 0..co {
            let g = o / opg;
            for (y0, x0) in (0..oh).flat_map(|y0| (0..ow).map(move |x0| (y0, x0))) {
                let dy = f64::from(rs[((n * co + o) * oh + y0) * ow + x0]);
                for c in 0..cpg {
                    for (ky, kx) in (0..kh).flat_map(|ky| (0..kw).map(move |kx| (ky, kx))) {
                        let iy = (y0 * stride[0] + ky * dilation[0]).checked_sub(padding[0]);
                        let ix = (x0 * stride[1] + kx * dilation[1]).checked_sub(padding[1]);
                        let (Some(iy), Some(ix)) = (iy, ix) else {
                            continue;
                        };
                        if iy >= h || ix >= w {
                            continue;
                        }
                        let xi = ((n * ci + g * cpg + c) * h + iy) * w + ix;
                        let wi = ((o * cpg + c) * kh + ky) * kw + kx;
                        want_w[wi] += dy * f64::from(xs[xi]);
                        want_x[xi] += dy * f64::from(ws[wi]);
                    }
                }
            }
        }
    }
    for (what, got, want) in [("input", &got_x, &want_x), ("weight", &got_w, &want_w)] {
        assert_eq!(got.len(), want.len(), "{what} gradient length, {case:?}");
        for (i, (&g, &e)) in got.iter().zip(want.iter()).enumerate() {
            assert!(
                (f64::from(g) - e).abs() <= 1e-4 * (1.0 + e.abs()),
                "{what} gradient [{i}]: {g} against {e}, {case:?}"
            );
        }
    }
}

#[test]
fn conv_gradients_match_a_direct_sum_over_strides_paddings_dilations_and_groups() {
    let base = Case {
        batch: 3,
        channels_in: 4,
        channels_out: 6,
        size: [9, 7],
        kernel: [3, 3],
        stride: [1, 1],
        padding: [1, 1],
        dilation: [1, 1],
        groups: 1,
    };
    let cases = [
        base,
        // The reference CNN's two layers, small.
        Case {
            channels_in: 3,
            channels_out: 8,
            size: [8, 8],
            kernel: [5, 5],
            padding: [2, 2],
            ..base
        },
        Case {
            batch: 9,
            channels_in: 8,
            channels_out: 8,
            size: [4, 4],
            kernel: [5, 5],
            padding: [2, 2],
            ..base
        },
        Case {
            stride: [2, 3],
            ..base
        },
        Case {
            padding: [0, 2],
            kernel: [2, 4],
            ..base
        },
        Case {
            dilation: [2, 1],
            padding: [2, 0],
            ..base
        },
        Case { groups: 2, ..base },
        Case {
            channels_in: 6,
            channels_out: 6,
            groups: 6,
            ..base
        },
        Case {
            batch: 1,
            size: [3, 3],
            kernel: [3, 3],
            padding: [0, 0],
            ..base
        },
    ];
    for case in cases {
        check(case);
    }
}
