//! The Burn network shared by both model kinds: a stack of `Linear` layers with ReLU between
//! them (none after the last).

use burn::module::{Module, Param, ParamId};
use burn::nn::Linear;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData};
use rand::Rng;
use rand::rngs::StdRng;

/// A multilayer perceptron: `Linear → ReLU → … → Linear`.
///
/// For the autoencoder the widths are `[in, h1, …, bottleneck, …, h1, in]`; for the forecaster
/// `[in, h1, …, hk, features]`.
#[derive(Module, Debug)]
pub struct MlpNet {
    /// The layers, input first. Each weight is `[d_input, d_output]`.
    pub layers: Vec<Linear>,
}

impl MlpNet {
    /// A network with the given boundary widths and weights drawn from `rng`
    /// (uniform in `±1/sqrt(d_input)`, the PyTorch/Burn default), so a seed fixes them.
    pub fn init(sizes: &[usize], rng: &mut StdRng, device: &Device) -> Self {
        let layers = sizes
            .windows(2)
            .enumerate()
            .map(|(index, pair)| {
                let (d_in, d_out) = (pair[0], pair[1]);
                let bound = 1.0 / (d_in as f32).sqrt();
                let weight: Vec<f32> = (0..d_in * d_out)
                    .map(|_| rng.random_range(-bound..bound))
                    .collect();
                let bias: Vec<f32> = (0..d_out)
                    .map(|_| rng.random_range(-bound..bound))
                    .collect();
                linear_from(index, weight, bias, d_in, d_out, device)
            })
            .collect();
        Self { layers }
    }

    /// An uninitialised-shape network of the given widths with zero weights, used as the
    /// target of a record load (the record then overwrites every tensor).
    pub fn zeros(sizes: &[usize], device: &Device) -> Self {
        let layers = sizes
            .windows(2)
            .enumerate()
            .map(|(index, pair)| {
                let (d_in, d_out) = (pair[0], pair[1]);
                linear_from(
                    index,
                    vec![0.0; d_in * d_out],
                    vec![0.0; d_out],
                    d_in,
                    d_out,
                    device,
                )
            })
            .collect();
        Self { layers }
    }

    /// Forward pass of a `[rows, d_input]` batch.
    pub fn forward(&self, input: Tensor<2>) -> Tensor<2> {
        let last = self.layers.len().saturating_sub(1);
        let mut x = input;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x);
            if i < last {
                x = relu(x);
            }
        }
        x
    }

    /// Every layer's weights and bias as plain vectors (`[d_input × d_output]` row-major).
    pub fn export_weights(&self) -> Vec<(Vec<f32>, Vec<f32>, usize, usize)> {
        self.layers
            .iter()
            .map(|layer| {
                let weight = layer.weight.val();
                let [d_in, d_out] = weight.dims();
                let w = weight.into_data().try_into_vec::<f32>().unwrap_or_default();
                let b = match &layer.bias {
                    Some(bias) => bias
                        .val()
                        .into_data()
                        .try_into_vec::<f32>()
                        .unwrap_or_default(),
                    None => vec![0.0; d_out],
                };
                (w, b, d_in, d_out)
            })
            .collect()
    }
}

/// A trainable `Linear` layer holding the given values. Parameter ids are derived from the
/// layer index (instead of random) so a saved record is byte-for-byte reproducible.
fn linear_from(
    index: usize,
    weight: Vec<f32>,
    bias: Vec<f32>,
    d_in: usize,
    d_out: usize,
    device: &Device,
) -> Linear {
    Linear {
        weight: with_id(
            Param::from_tensor(Tensor::from_data(
                TensorData::new(weight, [d_in, d_out]),
                device,
            )),
            2 * index as u64 + 1,
        ),
        bias: Some(with_id(
            Param::from_tensor(Tensor::from_data(TensorData::new(bias, [d_out]), device)),
            2 * index as u64 + 2,
        )),
    }
}

fn with_id<const D: usize>(param: Param<Tensor<D>>, id: u64) -> Param<Tensor<D>> {
    let (_, value, mapper) = param.consume();
    Param::from_mapped_value(ParamId::from(id), value, mapper)
}

/// A `[rows, cols]` tensor from a row-major slice.
pub(crate) fn matrix(values: &[f32], rows: usize, cols: usize, device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values.to_vec(), [rows, cols]), device)
}

/// The tensor's values as a flat vector.
pub(crate) fn to_vec(tensor: Tensor<2>) -> Vec<f32> {
    tensor.into_data().try_into_vec::<f32>().unwrap_or_default()
}
