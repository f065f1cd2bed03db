//! A plain-Rust forward pass of the same MLP, with no framework: the performance floor that
//! Burn inference is measured against, and a cross-check of the Burn forward pass.

/// One dense layer: `y = x · W + b` with `W` stored `[d_input × d_output]` row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Dense {
    /// Weights, `d_input × d_output`, row-major.
    pub weight: Vec<f32>,
    /// Bias, `d_output`.
    pub bias: Vec<f32>,
    /// Input width.
    pub d_input: usize,
    /// Output width.
    pub d_output: usize,
}

/// An MLP with ReLU after every layer but the last, identical in shape to
/// [`MlpNet`](crate::nn::MlpNet).
#[derive(Debug, Clone, PartialEq)]
pub struct Mlp {
    layers: Vec<Dense>,
    widest: usize,
}

impl Mlp {
    /// Build from layers; returns `None` if consecutive widths do not chain or a buffer has
    /// the wrong length.
    pub fn new(layers: Vec<Dense>) -> Option<Self> {
        if layers.is_empty() {
            return None;
        }
        for (i, layer) in layers.iter().enumerate() {
            if layer.weight.len() != layer.d_input * layer.d_output
                || layer.bias.len() != layer.d_output
            {
                return None;
            }
            if i > 0 && layers[i - 1].d_output != layer.d_input {
                return None;
            }
        }
        let widest = layers
            .iter()
            .map(|l| l.d_input.max(l.d_output))
            .max()
            .unwrap_or(0);
        Some(Self { layers, widest })
    }

    /// Copy the weights out of a Burn network.
    pub fn from_net(net: &crate::nn::MlpNet) -> Self {
        let layers = net
            .export_weights()
            .into_iter()
            .map(|(weight, bias, d_input, d_output)| Dense {
                weight,
                bias,
                d_input,
                d_output,
            })
            .collect();
        // The network's own layers always chain, so this cannot fail.
        Self::new(layers).unwrap_or(Self {
            layers: Vec::new(),
            widest: 0,
        })
    }

    /// Input width.
    pub fn input_len(&self) -> usize {
        self.layers.first().map_or(0, |l| l.d_input)
    }

    /// Output width.
    pub fn output_len(&self) -> usize {
        self.layers.last().map_or(0, |l| l.d_output)
    }

    /// The layers, input first.
    pub fn layers(&self) -> &[Dense] {
        &self.layers
    }

    /// Forward `rows` inputs (`rows × input_len`, row-major); the outputs
    /// (`rows × output_len`) are written to `output`, which is resized.
    ///
    /// Inputs must hold at least `rows × input_len` values (extra values are ignored).
    pub fn forward_batch(&self, inputs: &[f32], rows: usize, output: &mut Vec<f32>) {
        let (d_in, d_out) = (self.input_len(), self.output_len());
        output.clear();
        output.resize(rows * d_out, 0.0);
        let mut a = vec![0.0f32; self.widest];
        let mut b = vec![0.0f32; self.widest];
        for (row, out) in output.chunks_exact_mut(d_out.max(1)).enumerate().take(rows) {
            a[..d_in].copy_from_slice(&inputs[row * d_in..(row + 1) * d_in]);
            self.forward_one(&mut a, &mut b, out);
        }
    }

    /// Forward one row held in `a[..input_len]`; `b` is scratch; the result goes to `out`.
    fn forward_one(&self, a: &mut [f32], b: &mut [f32], out: &mut [f32]) {
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            let y = &mut b[..layer.d_output];
            y.copy_from_slice(&layer.bias);
            for (x, w_row) in a[..layer.d_input]
                .iter()
                .zip(layer.weight.chunks_exact(layer.d_output))
            {
                for (yj, wj) in y.iter_mut().zip(w_row) {
                    *yj += x * wj;
                }
            }
            if i < last {
                for v in y.iter_mut() {
                    *v = v.max(0.0);
                }
                a[..layer.d_output].copy_from_slice(y);
            } else {
                out.copy_from_slice(y);
            }
        }
    }
}
