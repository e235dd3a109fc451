package cluster

import (
	"fmt"

	restclient "k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// WriteKubeconfig writes a kubeconfig file for config, which must
// authenticate with a bearer token (the apiserver's loopback configuration
// and service account tokens both do).
func WriteKubeconfig(path string, config *restclient.Config, user string) error {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["local"] = &clientcmdapi.Cluster{
		Server:                   config.Host,
		CertificateAuthorityData: config.TLSClientConfig.CAData,
		// The loopback certificate is issued for this name, not for 127.0.0.1.
		TLSServerName: config.TLSClientConfig.ServerName,
	}
	kc.AuthInfos[user] = &clientcmdapi.AuthInfo{Token: config.BearerToken}
	kc.Contexts["local"] = &clientcmdapi.Context{Cluster: "local", AuthInfo: user}
	kc.CurrentContext = "local"
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	return nil
}
